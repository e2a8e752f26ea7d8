"""Lightning callbacks for what a run shows: validation panels, routing maps, inference cost.

* :class:`MattingPanels` — per validation, the first ``num_images`` samples as
  image | trimap | prediction | ground truth | error panels, and for MEMatte the routing map of
  every routed block over the image; logged to W&B (``val/panels``, ``val/routing``) and
  written as PNGs under ``save_dir`` (readable without W&B).
* :class:`InferenceProfiler` — per-image latency and peak memory of the net's forward pass in
  the test (and optionally validation) loop, logged as ``<stage>/latency_s`` and
  ``<stage>/peak_mib`` with the metrics (``metrics.json``, eval JSON, W&B, report tables).
* :class:`StepProgressBar` — Rich progress bar that counts optimiser steps of the whole run
  (``step 120/2000``) when training is bounded by ``max_steps``, instead of ``Epoch 0/-2``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from mematte.image_io import write_png
from mematte.profiling import PeakMemory
from mematte.visualize import matting_panel, routing_overlay

__all__ = ["MattingPanels", "InferenceProfiler", "StepProgressBar"]

MIB = 1024**2


def _image_u8(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _plane(x: Tensor) -> np.ndarray:
    """(1, H, W) → (H, W) float32 numpy."""
    return x.detach().float()[0].cpu().numpy()


def _same_size(pictures: list[np.ndarray]) -> list[np.ndarray]:
    """Pad (H, W, 3) pictures with black to a common size (W&B shows a list of one size)."""
    h = max(p.shape[0] for p in pictures)
    w = max(p.shape[1] for p in pictures)
    return [np.pad(p, ((0, h - p.shape[0]), (0, w - p.shape[1]), (0, 0))) for p in pictures]


def _check_stages(owner: str, stages: Sequence[str]) -> None:
    if isinstance(stages, str):
        raise ValueError(f"{owner}: stages must be a list such as [val, test], got the string {stages!r}")
    unknown = sorted(set(stages) - {"val", "test"})
    if unknown:
        raise ValueError(f"{owner}: unknown stages {unknown}; choose from val and test")


class MattingPanels(Callback):
    """Panels and routing maps of the first ``num_images`` samples of each evaluation.

    Args:
        num_images: samples drawn per validation / test (the first ones, so the same images
            each time and their panels compare across steps).
        max_side: longest side of each tile in pixels.
        every_n_validations: draw at every n-th validation (1 = each); tests always draw.
        routing_maps: also draw routing maps (MEMatte nets only).
        save_dir: folder for PNGs (``<save_dir>/<stage>_step<global step>/<name>_{panel,routing}.png``);
            None: W&B only.
        stages: which loops to draw, from ``val`` and ``test``.

    W&B keys: ``<stage>/panels`` and ``<stage>/routing``. Panels come from rank 0's share of
    the data; nothing is drawn during Lightning's sanity check.
    """

    def __init__(
        self,
        num_images: int = 4,
        max_side: int = 384,
        every_n_validations: int = 1,
        routing_maps: bool = True,
        save_dir: str | Path | None = None,
        stages: Sequence[str] = ("val",),
    ) -> None:
        if num_images < 0 or every_n_validations < 1 or max_side < 16:
            raise ValueError(
                f"MattingPanels: need num_images >= 0, every_n_validations >= 1 and max_side >= 16, got "
                f"{num_images}, {every_n_validations}, {max_side}"
            )
        _check_stages("MattingPanels", stages)
        self.num_images = num_images
        self.max_side = max_side
        self.every_n_validations = every_n_validations
        self.routing_maps = routing_maps
        self.save_dir = Path(save_dir) if save_dir else None
        self.stages = tuple(stages)
        self._validations = 0
        self._stage: str | None = None  # the loop being drawn, None = not drawing
        self._panels: list[tuple[str, np.ndarray]] = []
        self._routing: list[tuple[str, np.ndarray]] = []

    def _begin(self, stage: str, trainer: Trainer) -> None:
        self._panels, self._routing, self._stage = [], [], None
        if stage not in self.stages or trainer.sanity_checking:
            return
        due = True
        if stage == "val":
            due = self._validations % self.every_n_validations == 0
            self._validations += 1
        if due and trainer.is_global_zero and self.num_images > 0:
            self._stage = stage

    def _draw(self, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._stage is None or not isinstance(outputs, dict) or len(self._panels) >= self.num_images:
            return
        routing = outputs.get("routing") or []
        names = batch.get("name") or [f"sample{batch_idx}_{i}" for i in range(len(batch["image"]))]
        for i in range(len(batch["image"])):
            if len(self._panels) >= self.num_images:
                break
            name = str(names[i])
            image = _image_u8(batch["image"][i])
            self._panels.append((name, matting_panel(
                image, _plane(batch["trimap"][i]), _plane(outputs["alpha"][i]), _plane(batch["alpha"][i]),
                max_side=self.max_side, title=name,
            )))
            if self.routing_maps and routing:
                self._routing.append((name, routing_overlay(
                    image, routing, pl_module.net.backbone.patch_size,
                    block_indexes=getattr(pl_module, "routed_block_indexes", None),
                    max_side=self.max_side, sample=i,
                )))

    def _publish(self, trainer: Trainer) -> None:
        stage, self._stage = self._stage, None
        if stage is None or not self._panels:
            return
        step = trainer.global_step
        for key, kind, pictures in (("panels", "panel", self._panels), ("routing", "routing", self._routing)):
            if not pictures:
                continue
            key = f"{stage}/{key}"
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=key, images=_same_size([p for _, p in pictures]),
                                     caption=[n for n, _ in pictures], step=step)
            if self.save_dir is not None:
                for name, picture in pictures:
                    safe = name.replace("/", "_").replace("\\", "_")
                    write_png(self.save_dir / f"{stage}_step{step:06d}" / f"{safe}_{kind}.png", picture)
        self._panels, self._routing = [], []

    # ----------------------------------------------------------------- Lightning hooks
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("val", trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._draw(pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._publish(trainer)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("test", trainer)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._draw(pl_module, outputs, batch, batch_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._publish(trainer)


class InferenceProfiler(Callback):
    """Latency per image and peak memory of the net's forward pass, per evaluation stage.

    Forward hooks on ``pl_module.net`` time each forward (CUDA synchronised) and measure the
    memory it needed above what was in use just before it (weights, the batch; see
    :class:`~mematte.profiling.PeakMemory`), so metric computation and data loading are left
    out. At the end of the stage it logs ``<stage>/latency_s`` (median over batches of the
    forward time divided by the batch size) and ``<stage>/peak_mib`` (largest over batches).

    Args:
        stages: which loops to profile, from ``val`` and ``test``.

    CPU peaks use the process's resident high-water mark, reset before each forward; they
    include allocator and thread-pool growth, so they are the figure a user's machine sees.
    """

    def __init__(self, stages: Sequence[str] = ("test",)) -> None:
        _check_stages("InferenceProfiler", stages)
        self.stages = tuple(stages)
        self._handles: list[Any] = []
        self._meter: PeakMemory | None = None
        self._start = 0.0
        self._seconds: list[float] = []
        self._peaks: list[int] = []

    # ----------------------------------------------------------------- hooks on the net
    def _before(self, module: torch.nn.Module, args: Any) -> None:
        assert self._meter is not None
        self._meter.start(collect=False)  # a full gc per image would cost more than small forwards
        self._start = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        assert self._meter is not None
        peak = self._meter.peak_bytes()  # synchronises CUDA first
        seconds = time.perf_counter() - self._start
        batch = args[0].shape[0] if args and isinstance(args[0], Tensor) else 1
        self._seconds.append(seconds / max(batch, 1))
        self._peaks.append(peak)

    def _begin(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if stage not in self.stages or trainer.sanity_checking:
            return
        self._end_hooks()
        self._meter = PeakMemory(pl_module.device)
        self._seconds, self._peaks = [], []
        net = pl_module.net
        self._handles = [net.register_forward_pre_hook(self._before), net.register_forward_hook(self._after)]

    def _finish(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._handles:
            return
        self._end_hooks()
        if self._seconds:
            pl_module.log_dict({
                f"{stage}/latency_s": float(statistics.median(self._seconds)),
                f"{stage}/peak_mib": max(self._peaks) / MIB,
            }, sync_dist=False, rank_zero_only=True)

    def _end_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ----------------------------------------------------------------- Lightning hooks
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("val", trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("val", trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("test", trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._end_hooks()


class StepProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, counting optimiser steps when training is step-based.

    With ``max_steps`` set and no epoch limit (``max_epochs`` -1 or None, this project's
    trainers) the training bar spans the whole run: ``step 120/2000``, ``completed`` being
    ``trainer.global_step``, and it does not restart at each pass over the data. Lightning's
    own bar would read ``Epoch 0/-2`` (``max_epochs - 1``) and count batches of the current
    epoch. With an epoch limit it is Lightning's bar unchanged. Takes RichProgressBar's
    arguments.
    """

    def _step_based(self) -> bool:
        max_epochs = self.trainer.max_epochs
        return self.trainer.max_steps > 0 and (max_epochs is None or max_epochs < 0)

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._step_based():
            return super()._get_train_description(current_epoch)
        # as wide as "Validation" so the bars do not shift when one replaces the other
        return f"{'step':{len(self.validation_description)}}"

    def _show_steps(self, trainer: Trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, total=trainer.max_steps, completed=trainer.global_step)
            self.refresh()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._step_based():
            self._show_steps(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._step_based():
            self._show_steps(trainer)
