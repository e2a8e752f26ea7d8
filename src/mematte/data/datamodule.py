"""Lightning data module wrapping already-instantiated matting datasets.

Hydra instantiates the datasets (``data.train_set``, ``data.val_set``, ``data.test_set``) and
passes them in; this module only builds the loaders. Samples are pure functions of their
index (see :mod:`mematte.data.synthetic`), so no ``worker_init_fn`` / worker seeding is needed.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["MattingDataModule"]


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
    ) -> None:
        super().__init__()
        # Datasets are objects, not hyperparameters: log only the loader settings.
        self.save_hyperparameters(ignore=["train_set", "val_set", "test_set"])
        self.train_set = train_set
        self.val_set = val_set
        self.test_set = test_set
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.eval_batch_size = eval_batch_size

    def _dataset(self, split: str) -> Dataset:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise ValueError(
                f"data.{split}_set is not set in the data config, so there is no {split} dataloader; "
                f"set data.{split}_set (e.g. to a SyntheticMatting*Set) or skip the {split} stage"
            )
        return dataset

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader of ``batch_size`` crops; the incomplete last batch is dropped."""
        return self._loader(self._dataset("train"), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Ordered loader of ``eval_batch_size`` (1) full-resolution validation samples."""
        return self._loader(self._dataset("val"), self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """Ordered loader of ``eval_batch_size`` (1) full-resolution test samples."""
        return self._loader(self._dataset("test"), self.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader` (prediction runs over the test set)."""
        return self.test_dataloader()
