"""Lightning data module wrapping already-instantiated matting datasets.

Hydra instantiates the datasets (``data.train_set``, ``data.val_set``, ``data.test_set``) and
passes them in; this module only builds the loaders. Samples are pure functions of their
index (see :mod:`mematte.data.synthetic`), so no ``worker_init_fn`` / worker seeding is needed.

The training order is resumable: :class:`ResumableSampler` shuffles as a pure function of
``(seed, epoch)`` and :class:`ResumableDataLoader` reports, through Lightning's stateful
dataloader protocol (``state_dict`` / ``load_state_dict``, stored in checkpoints under
``loops.fit_loop.state_dict.combined_loader``), how far into the epoch training got. A run
resumed from a mid-epoch checkpoint therefore sees exactly the batches the uninterrupted run
would have seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

__all__ = ["MattingDataModule", "ResumableDataLoader", "ResumableSampler"]

log = logging.getLogger("mematte")


class ResumableSampler(DistributedSampler):
    """Shuffled indices that are a pure function of ``(seed, epoch)``, resumable mid-epoch.

    A :class:`~torch.utils.data.DistributedSampler` (one shard per rank; with one replica it
    is a plain shuffle), so Lightning leaves it in place under DDP instead of wrapping it.
    :meth:`resume` makes the next pass over ``epoch`` start ``start`` indices in (once).

    Args:
        dataset: the sized dataset.
        seed: shuffle seed; the order of epoch ``e`` uses ``seed + e``.
        num_replicas, rank: the data-parallel world size and this process's rank.
        shuffle: False for the dataset order.
        drop_last: drop the tail that does not divide evenly among the replicas.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a resume position belongs to the epoch it was saved in
            self.start = 0
        super().set_epoch(epoch)

    def resume(self, epoch: int, start: int) -> None:
        """Make the next pass over ``epoch`` skip its first ``start`` indices (of this rank)."""
        self.set_epoch(epoch)
        self.start = max(0, min(int(start), self.num_samples))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position within an epoch is saved in and restored from checkpoints.

    Lightning calls :meth:`state_dict` when it saves a checkpoint and :meth:`load_state_dict`
    before iterating when it resumes. The position is the number of batches of the current
    epoch that *training has processed* (``progress``), not the number the loader has
    produced (workers and Lightning's fetcher read ahead).

    Attributes:
        progress: returns the number of batches of the current epoch processed so far; set by
            :class:`MattingDataModule` from the trainer. Without it the epoch restarts.
    """

    progress: Callable[[], int] | None = None

    def _resumable_sampler(self) -> ResumableSampler:
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(
                f"ResumableDataLoader needs a ResumableSampler, got {type(self.sampler).__name__} "
                "(was the loader rebuilt with another sampler?)"
            )
        return self.sampler

    def state_dict(self) -> dict[str, Any]:
        sampler = self._resumable_sampler()
        batches = int(self.progress()) if self.progress is not None else 0
        return {
            "epoch": sampler.epoch,
            "batches": batches,
            "samples": batches * int(self.batch_size or 1),
            "seed": sampler.seed,
            "num_samples": len(self.dataset),
            "num_replicas": sampler.num_replicas,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self._resumable_sampler()
        epoch, samples = int(state["epoch"]), int(state["samples"])
        changed = [
            f"{key} {state[key]} → {now}"
            for key, now in (("seed", sampler.seed), ("num_samples", len(self.dataset)),
                             ("num_replicas", sampler.num_replicas), ("batch_size", self.batch_size))
            if key in state and state[key] != now
        ]
        if changed:
            log.warning(
                "resuming with different data settings (%s): the batch order cannot continue exactly "
                "where the checkpoint left off", ", ".join(changed),
            )
        if int(state["batches"]) >= len(self):  # saved at the end of an epoch: the next one starts
            epoch, samples = epoch + 1, 0
        sampler.resume(epoch, samples)


def collate_eval(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collation of evaluation samples, minus those a dataset could not read.

    Samples of the form ``{"name", "skipped": message}`` (``FolderEvalSet(on_bad_file="skip")``)
    are dropped from the batch and their messages listed under ``batch["skipped"]``; a batch of
    only such samples is ``{"skipped": [...]}`` (no "image"), which the module counts and passes.
    """
    good = [s for s in samples if "skipped" not in s]
    batch: dict[str, Any] = default_collate(good) if good else {}
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    if skipped:
        batch["skipped"] = skipped
    return batch


class MattingDataModule(L.LightningDataModule):
    """Train / val / test / predict loaders for matting datasets.

    Batches are dicts as produced by the datasets (default collation): "image" (B, 3, H, W),
    "alpha" and "trimap" (B, 1, H, W) float32, "name" a list of B str, plus "fg" / "bg"
    (B, 3, H, W) for training batches.

    Args:
        train_set: training dataset (fixed-size crops), or None.
        val_set: validation dataset (full-resolution images of varying size), or None.
        test_set: test dataset, also used for prediction, or None.
        batch_size: training batch size (incomplete last batches are dropped).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory of batches (faster host-to-GPU copies).
        persistent_workers: keep workers alive between epochs (only used if num_workers > 0).
        eval_batch_size: val / test / predict batch size; 1 by default because full-resolution
            images of different sizes cannot be stacked.
        shuffle_seed: seed of the training order (epoch ``e`` uses ``shuffle_seed + e``);
            None: the run's seed (``seed``, via ``PL_GLOBAL_SEED``), else 0.
        augment: batch augmentation run on the training device (``on_after_batch_transfer``,
            training batches only), e.g. :class:`mematte.data.augment.MattingAugment`; required
            when the train set returns raw fg/alpha/bg layers (``needs_augment``).
        eval_region: metric region of this benchmark: "unknown" (trimap == 128) or "all"
            (Distinctions-646 scores the whole image, docs/method.md, metric conventions).
        root: dataset root of on-disk data (the sets interpolate ``${data.root}``), or None.
        hint: how to obtain the dataset (shown by ``python -m mematte.data check``).
    """

    def __init__(
        self,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        test_set: Dataset | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        eval_batch_size: int = 1,
        shuffle_seed: int | None = None,
        augment: nn.Module | None = None,
        eval_region: str = "unknown",
        root: str | None = None,
        hint: str = "",
    ) -> None:
        super().__init__()
        # Datasets and the augmentation are objects, not hyperparameters: log only settings.
        self.save_hyperparameters(ignore=["train_set", "val_set", "test_set", "augment"])
        if eval_region not in ("unknown", "all"):
            raise ValueError(f"eval_region must be 'unknown' or 'all', got {eval_region!r}")
        if getattr(train_set, "needs_augment", False) and augment is None:
            raise ValueError(
                f"data.train_set ({type(train_set).__name__}) returns raw fg/alpha/bg layers but data.augment "
                "is null: set data.augment (e.g. _target_: mematte.data.augment.MattingAugment)"
            )
        self.augment = augment
        self.eval_region = eval_region
        self.root = root
        self.hint = hint
        self._augment_seed = int(getattr(augment, "seed", 0))
        self.train_set = train_set
        self.val_set = val_set
        self.test_set = test_set
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.eval_batch_size = eval_batch_size
        self.shuffle_seed = shuffle_seed

    def setup(self, stage: str) -> None:
        # one augmentation stream per rank: the same seed everywhere would correlate the ranks
        if self.augment is not None and self.trainer is not None and hasattr(self.augment, "reseed"):
            self.augment.reseed(self._augment_seed + self.trainer.global_rank)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches go through ``augment`` on the training device."""
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            return self.augment(batch)
        return batch

    def _dataset(self, split: str) -> Dataset:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise ValueError(
                f"data.{split}_set is not set in the data config, so there is no {split} dataloader; "
                f"set data.{split}_set (e.g. to a SyntheticMatting*Set) or skip the {split} stage"
            )
        return dataset

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Ordered loader of ``eval_batch_size`` samples, unreadable ones set aside (:func:`collate_eval`)."""
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=collate_eval,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _seed(self) -> int:
        if self.shuffle_seed is not None:
            return int(self.shuffle_seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _batches_done(self) -> int:
        """Batches of the current epoch that training has processed (Lightning's progress)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader of ``batch_size`` crops; the incomplete last batch is dropped.

        The order is a pure function of the seed and the epoch, sharded by rank under DDP,
        and resumable mid-epoch (:class:`ResumableDataLoader`).
        """
        dataset = self._dataset("train")
        trainer = self.trainer
        seed = self._seed()
        sampler = ResumableSampler(
            dataset,
            seed=seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        # Worker seeds come from the loader's generator: drawn from its own generator, not the
        # global torch RNG, so creating an iterator never shifts the training randomness.
        loader = ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )
        loader.progress = self._batches_done
        return loader

    def val_dataloader(self) -> DataLoader:
        """Ordered loader of ``eval_batch_size`` (1) full-resolution validation samples."""
        return self._eval_loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader:
        """Ordered loader of ``eval_batch_size`` (1) full-resolution test samples."""
        return self._eval_loader(self._dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader` (prediction runs over the test set)."""
        return self.test_dataloader()
