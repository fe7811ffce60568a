from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tsmixit.data.datasets import (
    LabelledDataset,
    MixtureOfMixturesDataset,
    SegmentDataset,
)
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ManifestError

SR = 8000


def _file_corpus(root: Path, n: int = 4, channels: int = 1, scale: float = 0.2,
                 lengths=None, labelled=None) -> Manifest:
    """n file rows: mixture i is uniform noise * scale; sources are separate files."""
    rows = []
    for i in range(n):
        T = lengths[i] if lengths else 300 + 50 * i
        rng = np.random.default_rng(i)
        mix = (scale * rng.uniform(-1, 1, (T, channels))).astype(np.float32)
        srcs = [(0.1 * rng.uniform(-1, 1, T)).astype(np.float32) for _ in range(2)]
        sf.write(root / f"mix{i}.wav", mix, SR, subtype="FLOAT")
        for k, s in enumerate(srcs):
            sf.write(root / f"s{k}_{i}.wav", s, SR, subtype="FLOAT")
        rows.append({"id": f"m{i}", "split": "train",
                     "labelled": bool(labelled[i]) if labelled else False,
                     "sample_rate": SR, "channels": channels, "num_frames": T, "n_speakers": 2,
                     "mixture": f"mix{i}.wav", "sources": [f"s0_{i}.wav", f"s1_{i}.wav"]})
    Manifest(rows, root=root).save(root / "manifest.jsonl")
    return Manifest.load(root / "manifest.jsonl")


def _locate(segment: np.ndarray, full: np.ndarray) -> int:
    """Start of `segment` (C, L) inside `full` (C, T) (brute force)."""
    L = segment.shape[1]
    hits = [s for s in range(full.shape[1] - L + 1) if np.array_equal(full[:, s:s + L], segment)]
    assert len(hits) == 1
    return hits[0]


def test_segment_dataset_crops_are_slices_deterministic_per_seed_epoch_index(tmp_path):
    manifest = _file_corpus(tmp_path, lengths=[500, 900, 100, 700])
    data = SegmentDataset(manifest, segment_frames=200, seed=3)
    item = data[1]["mixture"]
    assert item.dtype == torch.float32 and item.shape == (1, 200)
    full = manifest.load_mixture(1)
    start = _locate(item.numpy(), full)
    assert torch.equal(SegmentDataset(manifest, 200, seed=3)[1]["mixture"], item)
    starts = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        starts.add(_locate(data[1]["mixture"].numpy(), full))
    assert len(starts) > 1 and start in starts
    short = data[2]["mixture"]  # 100 frames: zero-padded at the end
    np.testing.assert_array_equal(short[:, :100].numpy(), manifest.load_mixture(2))
    assert torch.all(short[:, 100:] == 0)
    whole = SegmentDataset(manifest, segment_frames=None)
    assert whole[3]["mixture"].shape == (1, 700)


def test_mixture_of_mixtures_sums_two_different_mixtures(tmp_path):
    manifest = _file_corpus(tmp_path, channels=2)
    data = MixtureOfMixturesDataset(manifest, segment_frames=250, seed=0)
    assert len(data) == len(manifest) == 4  # one MoM per mixture and epoch
    fulls = [manifest.load_mixture(i) for i in range(len(manifest))]
    for index in range(len(data)):
        item = data[index]
        mom, refs = item["mixture"].numpy(), item["references"].numpy()
        assert mom.shape == (2, 250) and refs.shape == (2, 250)
        np.testing.assert_allclose(mom[0], refs[0] + refs[1], atol=1e-7)
        # each reference is a crop (at mic 0) of a different mixture of the manifest
        origin = [
            next(i for i, f in enumerate(fulls)
                 if any(np.array_equal(f[0, s:s + 250], r) for s in range(f.shape[1] - 249)))
            for r in refs
        ]
        assert origin[0] != origin[1]
    assert torch.equal(data[3]["mixture"], MixtureOfMixturesDataset(
        manifest, 250, seed=0)[3]["mixture"])


def test_mixture_of_mixtures_rescales_consistently_when_it_would_clip(tmp_path):
    rows = []
    for i, level in enumerate([0.8, 0.9]):
        sf.write(tmp_path / f"c{i}.wav", np.full(300, level, np.float32), SR, subtype="FLOAT")
        rows.append({"id": f"c{i}", "split": "train", "labelled": False, "sample_rate": SR,
                     "channels": 1, "num_frames": 300, "n_speakers": 2,
                     "mixture": f"c{i}.wav", "sources": None})
    data = MixtureOfMixturesDataset(Manifest(rows, root=tmp_path), segment_frames=200)
    item = data[0]
    mom, refs = item["mixture"].numpy(), item["references"].numpy()
    np.testing.assert_allclose(np.abs(mom).max(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mom[0], refs.sum(0), atol=1e-7)
    np.testing.assert_allclose(np.sort(refs[:, 0]), np.array([0.8, 0.9]) / 1.7, rtol=1e-6)


def test_single_mixture_probability_replaces_the_second_mixture_by_silence(tmp_path):
    manifest = _file_corpus(tmp_path)
    item = MixtureOfMixturesDataset(manifest, 200, single_mixture_prob=1.0)[0]
    assert torch.all(item["references"][1] == 0)
    torch.testing.assert_close(item["mixture"][0], item["references"][0])


def test_unsupervised_datasets_never_open_source_files(tmp_path, monkeypatch):
    manifest = _file_corpus(tmp_path, labelled=[True, False, False, False])
    sources = {p for row in manifest for p in row["sources"]}
    for path in sources:
        Path(path).unlink()
    opened = []
    for name in ("read", "info"):  # every decode in tsmixit.audio goes through these
        real = getattr(sf, name)

        def spy(path, *args, _real=real, **kwargs):
            opened.append(str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(sf, name, spy)

    def forbidden(*args, **kwargs):
        raise AssertionError("a source loader was called")

    monkeypatch.setattr(Manifest, "load_sources", forbidden)
    for data in (SegmentDataset(manifest, 200), SegmentDataset(manifest, None),
                 MixtureOfMixturesDataset(manifest, 200)):
        for index in range(len(data)):
            assert torch.isfinite(data[index]["mixture"]).all()
    assert opened and not sources & set(opened)
    monkeypatch.undo()
    labelled = LabelledDataset(manifest, 200)
    assert len(labelled) == 1
    with pytest.raises(ManifestError, match="none of its 3 rows is labelled"):
        LabelledDataset(manifest.select(labelled=False))


def test_labelled_dataset_pairs_mixture_and_sources_on_one_window(tmp_path):
    manifest = _file_corpus(tmp_path, labelled=[False, True, False, True])
    data = LabelledDataset(manifest, segment_frames=120, seed=1)
    assert [r["id"] for r in data.manifest] == ["m1", "m3"]
    item = data[1]
    start = _locate(item["mixture"].numpy(), manifest.load_mixture(3))
    np.testing.assert_array_equal(item["sources"].numpy(),
                                  manifest.load_sources(3)[:, start:start + 120])
    pseudo = LabelledDataset(manifest, None, allow_unlabelled=True)
    assert len(pseudo) == 4 and pseudo[0]["sources"].shape == (2, 300)


def test_dataloader_workers_reproduce_direct_indexing_for_each_epoch(tmp_path):
    manifest = _file_corpus(tmp_path)
    data = MixtureOfMixturesDataset(manifest, 150, seed=5)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2)  # a batch each
    for epoch in (0, 1):
        data.set_epoch(epoch)
        loaded = torch.cat([batch["mixture"] for batch in loader])
        direct = torch.stack([data[i]["mixture"] for i in range(len(data))])
        assert loaded.shape[0] == len(manifest) and torch.equal(loaded, direct)
    data.set_epoch(0)
    assert not torch.equal(direct, torch.stack([data[i]["mixture"] for i in range(len(data))]))
