"""The data of a training stage: a resumable distributed sampler and the data module.

Every process sees its own shard of the epoch (a single process is rank 0 of 1); the
dataset moves to the epoch (fresh crops and pairings); after a resume the batches of the
current epoch already trained on are skipped, so a resumed run sees the data an
uninterrupted one would.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (one shard per rank; a single process is rank 0 of 1) that also
    moves the dataset to the epoch (fresh crops and pairings) and, after a resume, skips
    the batches of the current epoch that were already trained on."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 shuffle: bool, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.batch_size = batch_size
        self.resume_epoch, self.resume_batches = -1, 0

    def set_epoch(self, epoch: int) -> None:
        # Only training data moves with the epoch: validation keeps its epoch-0 crops and
        # pairings so that every validation (best checkpoint, plateau) scores the same data.
        super().set_epoch(epoch)
        if self.shuffle and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.epoch == self.resume_epoch:
            indices = indices[self.resume_batches * self.batch_size:]
            self.resume_epoch = -1
        return iter(indices)


class StageData(L.LightningDataModule):
    """Training and validation loaders of one stage. Its state (epoch and batches done in
    it) travels in the checkpoint so that a resumed epoch continues where it stopped."""

    def __init__(self, train: Dataset, valid: Dataset | None, batch_size: int,
                 num_workers: int, seed: int, valid_batch_size: int) -> None:
        super().__init__()
        self.train_set, self.valid_set = train, valid
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.valid_batch_size = valid_batch_size
        self._resume: dict | None = None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = ResumableSampler(dataset, self.trainer.world_size, self.trainer.global_rank,
                                   self.seed, shuffle=train, batch_size=batch_size)
        if train and self._resume is not None:
            sampler.resume_epoch = self._resume["epoch"]
            sampler.resume_batches = self._resume["batches"]
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
            num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.valid_set is None:
            return []
        return self._loader(self.valid_set, self.valid_batch_size, train=False)

    def state_dict(self) -> dict:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state
