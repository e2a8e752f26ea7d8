"""LightningModule wiring the matting net, its losses, metrics and optimisation."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping
from typing import Any

import lightning
import torch
from lightning import LightningModule
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mematte.losses import MattingLoss
from mematte.metrics import MattingMetrics
from mematte.models.matting_net import MattingNet, MattingOutput, clamp_to_trimap
from mematte.optim import param_groups

Batch = Mapping[str, Any]


def environment_versions() -> dict[str, str]:
    """Library versions stored in every checkpoint (for reproducing a run)."""
    import mematte

    return {
        "mematte": mematte.__version__,
        "torch": str(torch.__version__),
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


class MattingModule(LightningModule):
    """Trains and evaluates a :class:`~mematte.models.matting_net.MattingNet`.

    Args:
        net: the matting network (ViTMatte or MEMatte).
        loss: matting loss terms (unknown/known L1, Laplacian, gradient penalty); may be
            None for evaluation only.
        optimizer: partial optimiser taking ``params`` and ``lr`` (e.g. ``AdamW`` with betas).
        lr: base learning rate (ViTMatte: 5e-4).
        scheduler: partial taking ``(optimizer, total_steps)`` and returning a per-step
            scheduler, or None for a constant lr.
        layer_decay: layer-wise lr decay of the backbone (ViTMatte: 0.65).
        weight_decay: weight decay (none on norms and the pos-embed).
        eval_region: metric region, ``"unknown"`` (trimap == 128) or ``"all"``.
        net_config: the resolved Hydra config of ``net``, stored in checkpoints so that a
            checkpoint alone rebuilds its model.
    """

    def __init__(
        self,
        net: MattingNet,
        loss: MattingLoss | None = None,
        optimizer: Callable[..., Optimizer] | None = None,
        lr: float = 5e-4,
        scheduler: Callable[..., LRScheduler] | None = None,
        layer_decay: float = 1.0,
        weight_decay: float = 0.1,
        eval_region: str = "unknown",
        net_config: dict | None = None,
    ) -> None:
        super().__init__()
        # Only plain values go to hparams so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics = MattingMetrics(region=eval_region).clone(prefix="val/")
        self.test_metrics = MattingMetrics(region=eval_region).clone(prefix="test/")

    def forward(self, image: Tensor, trimap: Tensor) -> MattingOutput:
        """image (B, 3, H, W) in [0, 1], trimap (B, 1, H, W) in {0, 0.5, 1}."""
        return self.net(image, trimap)

    # ------------------------------------------------------------------ training
    def compute_losses(self, batch: Batch, out: MattingOutput) -> dict[str, Tensor]:
        """All loss terms of one batch; ``"loss"`` is the total that is optimised."""
        return self.loss(out.alpha, batch["alpha"], batch["trimap"])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self(batch["image"], batch["trimap"])
        losses = self.compute_losses(batch, out)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=batch_size
        )
        return losses["loss"]

    # ------------------------------------------------------------------ evaluation
    def predict_alpha(self, batch: Batch) -> Tensor:
        """Full-resolution alpha clamped to the trimap's known regions: (B, 1, H, W)."""
        out = self(batch["image"], batch["trimap"])
        return clamp_to_trimap(out.alpha, batch["trimap"])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        alpha = self.predict_alpha(batch)
        self.val_metrics.update(alpha, batch["alpha"], batch["trimap"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=False)
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        alpha = self.predict_alpha(batch)
        self.test_metrics.update(alpha, batch["alpha"], batch["trimap"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=False)
        self.test_metrics.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None or self.loss is None:
            raise ValueError("MattingModule was built without optimizer/loss: it can evaluate, not train")
        groups = param_groups(
            self.net,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            layer_decay=self.hparams.layer_decay,
        )
        # Each group carries its own layer-decayed lr; the optimiser's lr is the base value.
        optimizer = self.optimizer_factory(params=groups, lr=self.hparams.lr)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mematte"] = {
            "net_config": self.hparams.net_config,
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "versions": environment_versions(),
        }
