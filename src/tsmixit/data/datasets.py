"""Torch datasets over a `Manifest`: segments, mixtures of mixtures, labelled pairs.

Every item is a dict of float32 tensors. Random choices come from a generator seeded by
(seed, epoch, index), so an item is the same whichever DataLoader worker or DDP rank draws
it; call `set_epoch(epoch)` before each epoch for fresh crops (with non-persistent workers,
which copy the dataset at the start of every epoch).

Unsupervised datasets (`SegmentDataset`, `MixtureOfMixturesDataset`) only ever call
`Manifest.load_mixture`: they never open a source file.
"""

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tsmixit.data.manifest import Manifest, has_sources
from tsmixit.errors import ManifestError


class _ManifestDataset(Dataset):
    """Shared crop logic: random `segment_frames` windows, zero-padded when too short."""

    def __init__(
        self, manifest: Manifest, segment_frames: int | None, seed: int, reference_only: bool
    ) -> None:
        if len(manifest) == 0:
            raise ManifestError(f"{manifest.name}: no rows to build a dataset from; check the "
                                "split and labelled selection.")
        if segment_frames is not None and segment_frames <= 0:
            raise ManifestError(f"segment_frames must be positive, got {segment_frames}.")
        self.manifest = manifest
        self.segment_frames = segment_frames
        self.seed = seed
        self.reference_only = reference_only
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops and pairings of `epoch`."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _window(self, i: int, rng: np.random.Generator) -> tuple[int, int]:
        """(start, frames) of a random crop of row i (the whole row if it is short)."""
        total = self.manifest.rows[i]["num_frames"]
        if self.segment_frames is None or total <= self.segment_frames:
            return 0, total
        return int(rng.integers(0, total - self.segment_frames + 1)), self.segment_frames

    def _mixture(self, i: int, window: tuple[int, int]) -> np.ndarray:
        x = self.manifest.load_mixture(i, *window, reference_only=self.reference_only)  # (C, T)
        return _pad(x, self.segment_frames)


class SegmentDataset(_ManifestDataset):
    """Mixtures x alone: random crops of `segment_frames` (training), or whole mixtures
    when `segment_frames` is None (evaluation). Item: {"mixture": (C, T)}.

    reference_only: keep microphone 0 only, C = 1 (single-channel systems on multi-mic data).
    """

    def __init__(
        self,
        manifest: Manifest,
        segment_frames: int | None = None,
        seed: int = 0,
        reference_only: bool = False,
    ) -> None:
        super().__init__(manifest, segment_frames, seed, reference_only)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        x = self._mixture(index, self._window(index, self._rng(index)))
        return {"mixture": torch.from_numpy(x)}


class MixtureOfMixturesDataset(_ManifestDataset):
    """MixIT training examples: x_bar = x1 + x2 from two different random mixtures.

    Each mixture is randomly cropped to `segment_frames` (None: whole, the shorter one
    zero-padded). With probability `single_mixture_prob` x2 is silence (a MoM with fewer
    speakers). When max |x_bar| > 1 the MoM and both references are divided by that peak,
    so x_bar = x1 + x2 still holds. Item: {"mixture": x_bar (C, T), "references": (2, T),
    x1 and x2 at microphone 0}. One MoM per mixture per epoch.
    """

    def __init__(
        self,
        manifest: Manifest,
        segment_frames: int | None,
        seed: int = 0,
        single_mixture_prob: float = 0.0,
        reference_only: bool = False,
    ) -> None:
        super().__init__(manifest, segment_frames, seed, reference_only)
        if len(manifest) < 2:
            raise ManifestError(f"{manifest.name}: mixtures of mixtures need at least 2 "
                                f"mixtures, the selection has {len(manifest)}.")
        if not 0.0 <= single_mixture_prob <= 1.0:
            raise ManifestError(f"single_mixture_prob must be in [0, 1], got "
                                f"{single_mixture_prob}.")
        self.single_mixture_prob = single_mixture_prob

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = self._rng(index)
        n = len(self.manifest)
        a = int(rng.integers(n))
        b = (a + int(rng.integers(1, n))) % n  # a different mixture
        single = rng.random() < self.single_mixture_prob
        x1 = self._mixture(a, self._window(a, rng))  # (C, T1)
        x2 = self._mixture(b, self._window(b, rng))  # (C, T2)
        if single:
            x2 = np.zeros_like(x2)
        length = max(x1.shape[1], x2.shape[1])
        x1, x2 = _pad(x1, length), _pad(x2, length)
        mom = x1 + x2  # (C, T)
        references = np.stack([x1[0], x2[0]])  # (2, T)
        peak = float(np.abs(mom).max())
        if peak > 1.0:
            mom, references = mom / peak, references / peak
        return {"mixture": torch.from_numpy(mom), "references": torch.from_numpy(references)}


class LabelledDataset(_ManifestDataset):
    """Pairs (x, s) for supervised (PIT) stages: {"mixture": (C, T), "sources": (S, T)},
    the sources at microphone 0, both cropped to the same window.

    Only labelled rows are used; `allow_unlabelled=True` also takes unlabelled rows that have
    sources (pseudo-labelled manifests, whose sources are the teacher's pseudo-targets).
    """

    def __init__(
        self,
        manifest: Manifest,
        segment_frames: int | None = None,
        seed: int = 0,
        allow_unlabelled: bool = False,
        reference_only: bool = False,
    ) -> None:
        if allow_unlabelled:
            lacking = [r["id"] for r in manifest.rows if not has_sources(r)]
            if lacking:
                raise ManifestError(f"{manifest.name}: {len(lacking)} row(s) have no sources "
                                    f"(first {lacking[0]!r}); a labelled dataset needs them.")
            selected = manifest
        else:
            selected = manifest.select(labelled=True)
            if len(selected) == 0:
                raise ManifestError(f"{manifest.name}: none of its {len(manifest)} rows is "
                                    "labelled; supervised stages need labelled mixtures.")
        super().__init__(selected, segment_frames, seed, reference_only)
        self.allow_unlabelled = allow_unlabelled

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        window = self._window(index, self._rng(index))
        x, s = self.manifest.load_example(  # (C, T), (S, T)
            index, self.allow_unlabelled, *window, reference_only=self.reference_only
        )
        return {"mixture": torch.from_numpy(_pad(x, self.segment_frames)),
                "sources": torch.from_numpy(_pad(s, self.segment_frames))}


class SemiSupervisedBatches(Dataset):
    """Whole training batches of semi-supervised MixIT (Wisdom et al., NeurIPS 2020), so
    that every batch holds exactly the proportion asked for: item i is batch i of the
    epoch (a loader of batch size 1 delivers it), made of `n_mom` mixtures of mixtures
    x_bar = x1 + x2 of `mixtures` (`MixtureOfMixturesDataset`: every training row, labelled
    ones included, their mixtures only) followed by `n_labelled` labelled mixtures x of
    `labelled` with their sources s (`LabelledDataset`: labelled rows only).

    Item: {"mixture": (n_mom + n_labelled, C, T), the MoMs first; "references":
    (n_mom, 2, T), x1 and x2 at microphone 0; "sources": (n_labelled, S, T) at microphone 0}.
    An epoch has one MoM per mixture: len(mixtures) // n_mom batches (at least 1; without
    MoMs, len(labelled) // n_labelled). Its labelled slots, in batch order, run through
    shuffled passes over the labelled rows, each occurrence with its own crop. Every draw
    depends on (seed, epoch, position) alone: a batch is the same whatever order, worker or
    rank asks for it, so a resumed epoch goes on with the batches an uninterrupted one has.
    """

    def __init__(
        self,
        mixtures: Manifest,
        labelled: Manifest | None,
        segment_frames: int,
        n_mom: int,
        n_labelled: int,
        seed: int = 0,
        single_mixture_prob: float = 0.0,
        reference_only: bool = False,
    ) -> None:
        if segment_frames is None or segment_frames <= 0:
            raise ManifestError("semi-supervised batches need a positive crop length "
                                f"(data.segment_seconds), got {segment_frames} frames.")
        if n_mom < 0 or n_labelled < 0 or n_mom + n_labelled == 0:
            raise ManifestError(f"a batch needs n_mom >= 0 and n_labelled >= 0 examples, not "
                                f"both 0; got {n_mom} and {n_labelled}.")
        if n_labelled and labelled is None:
            raise ManifestError(f"{n_labelled} labelled examples per batch need a labelled "
                                "manifest; pass the labelled fraction of the training rows.")
        self.manifest = mixtures
        self.segment_frames, self.n_mom, self.n_labelled = segment_frames, n_mom, n_labelled
        self.epoch = 0
        self.moms = (MixtureOfMixturesDataset(mixtures, segment_frames, seed,
                                              single_mixture_prob, reference_only)
                     if n_mom else None)
        self.labelled = (LabelledDataset(labelled, segment_frames, seed + 1,
                                         reference_only=reference_only)
                         if n_labelled else None)

    def set_epoch(self, epoch: int) -> None:
        """Select the pairings, labelled passes and crops of `epoch`."""
        self.epoch = epoch
        for part in (self.moms, self.labelled):
            if part is not None:
                part.set_epoch(epoch)

    def __len__(self) -> int:
        if self.moms is not None:
            return max(1, len(self.moms) // self.n_mom)
        return max(1, len(self.labelled) // self.n_labelled)

    def _labelled_example(self, position: int) -> tuple[Tensor, Tensor]:
        """(x (C, T), s (S, T)) of the epoch's `position`-th labelled slot: row `slot` of the
        shuffled pass `cycle` (a 4-word generator key, apart from the 3-word crop keys),
        cropped by the generator of its position."""
        part = self.labelled
        cycle, slot = divmod(position, len(part))
        order = np.random.default_rng([part.seed, part.epoch, cycle, 0]).permutation(len(part))
        row = int(order[slot])
        x, s = part.manifest.load_example(  # (C, T), (S, T)
            row, False, *part._window(row, part._rng(position)),
            reference_only=part.reference_only)
        return (torch.from_numpy(_pad(x, self.segment_frames)),
                torch.from_numpy(_pad(s, self.segment_frames)))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        T = self.segment_frames
        moms = [self.moms[index * self.n_mom + j] for j in range(self.n_mom)]
        pairs = [self._labelled_example(index * self.n_labelled + j)
                 for j in range(self.n_labelled)]
        mixture = torch.stack([m["mixture"] for m in moms] + [x for x, _ in pairs])  # (B, C, T)
        references = (torch.stack([m["references"] for m in moms]) if moms
                      else torch.zeros(0, 2, T))  # (n_mom, 2, T)
        sources = (torch.stack([s for _, s in pairs]) if pairs
                   else torch.zeros(0, 0, T))  # (n_labelled, S, T)
        return {"mixture": mixture, "references": references, "sources": sources}


def _pad(x: np.ndarray, frames: int | None) -> np.ndarray:
    """Zero-pad (..., T) at the end to `frames` (no-op when None or long enough)."""
    if frames is None or x.shape[-1] >= frames:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, frames - x.shape[-1])])
