"""LightningModule wiring the matting net, its losses, metrics and optimisation.

For MEMatte it also carries the routing objective (keep-ratio loss and schedule), the frozen
distillation teacher, and per-block routing statistics: kept ratios and the spread of
p(global) in training; in validation and test :class:`~mematte.metrics.RoutingStats` (kept
ratios under the used/argmax/expected rules, p(global) mean and std, unknown-region
enrichment), logged as ``<stage>/<stat>`` (pooled over the routed blocks) and
``<stage>/<stat>/block<i>``.

Numeric faults: a step whose loss or gradients are not finite is skipped (no parameter,
optimiser-state or BatchNorm-statistics change), counted (``train/nonfinite_steps``) and
logged; ``max_nonfinite_steps`` such steps in a row stop the run with
:class:`NonFiniteTrainingError`.
"""

from __future__ import annotations

import logging
import os
import platform
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import lightning
import torch
from lightning import LightningModule
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mematte.losses import KeepRatioLoss, MattingLoss, distillation_loss
from mematte.metrics import MattingMetrics, RoutingStats
from mematte.models.matting_net import MattingNet, MattingOutput
from mematte.models.vit import RoutingInfo
from mematte.optim import param_groups
from mematte.presets import encode_trimap, finish_alpha, inference_rules
from mematte.resilience import collect_rng_state, restore_rng_state

Batch = Mapping[str, Any]
log = logging.getLogger("mematte")


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive training steps with a NaN/inf loss or gradients."""


class _StepGuard:
    """What one optimiser step needs to be undone when it turns out non-finite.

    Opened by the first ``training_step`` of an optimiser step (several with gradient
    accumulation) and closed in ``on_before_optimizer_step``.
    """

    def __init__(self, buffers: list[Tensor]) -> None:
        # BatchNorm running statistics change in the forward pass; a NaN batch poisons them.
        self.buffers = [b.detach().clone() for b in buffers]
        self.loss_finite: Tensor | None = None
        self.names: list[str] = []

    def add(self, loss: Tensor, names: Any) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite
        if isinstance(names, (list, tuple)):
            self.names.extend(str(n) for n in names)


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
        routing: keep-ratio objective of the routed blocks (MEMatte); unused for ViTMatte.
        teacher: frozen net whose last backbone features the student matches (MSE); it is
            kept out of checkpoints (re-attached from ``teacher.ckpt`` when resuming).
        distill_weight: weight of the distillation term (1 in the paper).
        max_nonfinite_steps: stop after this many consecutive optimiser steps with a
            non-finite loss or gradients (each is skipped); None or 0: never stop.
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
        routing: KeepRatioLoss | None = None,
        teacher: nn.Module | None = None,
        distill_weight: float = 1.0,
        max_nonfinite_steps: int | None = 5,
        inference_preset: str = "default",
    ) -> None:
        super().__init__()
        # Only plain values go to hparams so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            logger=False, ignore=["net", "loss", "optimizer", "scheduler", "routing", "teacher"]
        )
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.routing = routing if net.is_routed else None
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        if self.teacher is not None:
            # The frozen teacher is in eval mode on purpose; Lightning would warn about it.
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        self.routed_block_indexes = net.backbone.routed_block_indexes
        # how validation / test encode the trimap, pad, clamp and round (mematte.presets)
        self.inference_rules = inference_rules(inference_preset, net.is_routed)
        self.val_metrics = MattingMetrics(region=eval_region).clone(prefix="val/")
        self.test_metrics = MattingMetrics(region=eval_region).clone(prefix="test/")
        # Routing statistics at inference, token-weighted over the split ("mean" pools the blocks).
        self.val_routing = self._routing_meters()
        self.test_routing = self._routing_meters()
        # "<file>: <reason>" of evaluation samples that could not be read (on_bad_file: skip)
        self.skipped_samples: list[str] = []
        # numeric-fault bookkeeping (see on_before_optimizer_step)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # total skipped steps of the run (kept in checkpoints)
        self._nonfinite_streak: list[tuple[int, list[str]]] = []  # (global step, sample names)
        self._guard: _StepGuard | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    def _norm_buffers(self) -> list[Tensor]:
        """BatchNorm running statistics (they change in the forward pass of training).

        Looked up each time: device moves replace buffer tensors and DDP's SyncBatchNorm
        conversion replaces the modules.
        """
        return [
            buf for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._NormBase) for buf in m.buffers()
        ]

    def _routing_meters(self) -> nn.ModuleDict:
        names = ["mean"] + [f"block{i}" for i in self.routed_block_indexes]
        return nn.ModuleDict({n: RoutingStats() for n in names}) if self.routed_block_indexes else nn.ModuleDict()

    def train(self, mode: bool = True) -> "MattingModule":
        super().train(mode)
        if self.teacher is not None:  # the teacher stays frozen in eval mode (BatchNorm, dropout)
            self.teacher.eval()
        return self

    def on_fit_start(self) -> None:
        if not self.net.is_routed:
            return
        if self.routing is None:
            log.info("no routing objective: the routers train from the matting loss alone")
        if self.teacher is None and self.hparams.distill_weight > 0:
            log.info("no teacher checkpoint given (teacher.ckpt=...): distillation loss is off")

    def forward(self, image: Tensor, trimap: Tensor, padding: str = "aligned") -> MattingOutput:
        """image (B, 3, H, W) in [0, 1], trimap (B, 1, H, W) in {0, 0.5, 1}; ``padding``:
        ``aligned`` or ``official`` (:func:`mematte.models.matting_net.padded_size`)."""
        return self.net(image, trimap, padding)

    # ------------------------------------------------------------------ training
    def compute_losses(self, batch: Batch, out: MattingOutput) -> dict[str, Tensor]:
        """All loss terms of one batch; ``"loss"`` is the total that is optimised.

        Matting terms, plus for MEMatte the keep-ratio term (``"keep_ratio_loss"``) and,
        with a teacher, the feature distillation term (``"distill"``).
        """
        losses = dict(self.loss(out.alpha, batch["alpha"], batch["trimap"]))
        total = losses["loss"]
        if self.routing is not None and self.routing.has_loss and out.routing:
            decisions = [info.decision for info in out.routing]
            losses["keep_ratio_loss"] = self.routing(decisions, self.global_step)
            total = total + losses["keep_ratio_loss"]
        if self.teacher is not None and self.hparams.distill_weight > 0:
            with torch.no_grad():
                x = self.teacher.prepare_inputs(batch["image"], batch["trimap"])
                target = self.teacher.backbone(x).features
            losses["distill"] = distillation_loss(out.features, target)
            total = total + self.hparams.distill_weight * losses["distill"]
        losses["loss"] = total
        return losses

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # Resumed run: continue the random streams exactly where the checkpoint left them
        # (after the data loader was set up, which may draw random numbers itself).
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        # Fixed top-K routing follows the scheduled share (annealing included).
        if self.routing is not None and not self.routing.has_loss:
            blocks = self.net.backbone.routed_blocks
            for block, ratio in zip(blocks, self.routing.targets(self.global_step, len(blocks))):
                block.keep_ratio = ratio

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self._guard is None:
            self._guard = _StepGuard(self._norm_buffers())
        out = self(batch["image"], batch["trimap"])
        losses = self.compute_losses(batch, out)
        self._guard.add(losses["loss"], batch.get("name"))
        batch_size = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        logged = {f"train/{k}": v for k, v in losses.items() if k != "loss"}
        if out.routing:
            logged.update(self._batch_routing_stats("train", out.routing))
            if self.routing is not None:
                targets = self.routing.targets(self.global_step, len(out.routing))
                logged["train/keep_ratio_target"] = sum(targets) / len(targets)
        self.log_dict(logged, batch_size=batch_size)
        return losses["loss"]

    def _batch_routing_stats(self, stage: str, routing: list[RoutingInfo]) -> dict[str, Tensor]:
        """Cheap routing statistics of one batch, from its (sampled) decisions and log-probs.

        ``<stage>/keep_ratio/block<i>`` and their mean ``<stage>/keep_ratio``: share of tokens
        sent to global attention; ``<stage>/p_global_std``: standard deviation of p(global) over
        the tokens of all routed blocks together (as ``val/p_global_std`` pools them).
        """
        stats = {
            f"{stage}/keep_ratio/block{i}": info.decision.detach().float().mean()
            for i, info in zip(self.routed_block_indexes, routing)
        }
        stats[f"{stage}/keep_ratio"] = torch.stack(list(stats.values())).mean()
        log_probs = [info.log_probs for info in routing if info.log_probs is not None]
        if log_probs:
            p_global = torch.cat([lp.detach()[..., 0].float().exp().flatten() for lp in log_probs])
            stats[f"{stage}/p_global_std"] = p_global.std(correction=0)
        return stats

    # ------------------------------------------------------------------ evaluation
    def _evaluate_batch(
        self, batch: Batch, metrics: MattingMetrics, routing: nn.ModuleDict
    ) -> dict[str, Any] | None:
        """Score a batch at full resolution, finished by the inference preset (by default
        clamped to the trimap's known regions; :mod:`mematte.presets`).

        Returns the clamped alpha (B, 1, H, W) and the routing decisions, for callbacks
        (validation panels, routing maps); None for a batch whose samples all failed to load.
        Samples a dataset could not read (``on_bad_file: skip``) arrive as ``batch["skipped"]``
        messages and are collected in :attr:`skipped_samples` instead of being scored.
        """
        self.skipped_samples.extend(batch.get("skipped") or [])
        if "image" not in batch:
            return None
        rules = self.inference_rules
        # the net reads the preset's trimap values; metrics and routing statistics keep the
        # quantised trimap (its unknown region is the scored one)
        trimap_in = encode_trimap(batch["trimap"], rules.trimap_encoding)
        out = self(batch["image"], trimap_in, padding=rules.padding)
        alpha = finish_alpha(out.alpha, trimap_in, rules)
        metrics.update(alpha, batch["alpha"], batch["trimap"])
        if out.routing:
            unknown = self.net.token_unknown_share(batch["trimap"])  # (B, h·w), the routing grid
            for i, info in zip(self.routed_block_indexes, out.routing):
                # "mean" pools every block's tokens (per-block rules stay per block)
                for meter in (routing[f"block{i}"], routing["mean"]):
                    meter.update(info.decision, info.log_probs, unknown)
        return {"alpha": alpha.detach(), "routing": out.routing}

    def _log_evaluation(self, stage: str, metrics: MattingMetrics, routing: nn.ModuleDict) -> None:
        values = dict(metrics.compute())
        stats: dict[str, Tensor] = {}
        for name, meter in routing.items():
            suffix = "" if name == "mean" else f"/{name}"
            stats.update({f"{stage}/{stat}{suffix}": value for stat, value in meter.compute().items()})
            meter.reset()
        # the progress bar gets the matting metrics and the pooled kept ratio only
        if f"{stage}/keep_ratio" in stats:
            values[f"{stage}/keep_ratio"] = stats.pop(f"{stage}/keep_ratio")
        self.log_dict(values, prog_bar=stage == "val", sync_dist=False)
        if stats:
            self.log_dict(stats, sync_dist=False)
        metrics.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any] | None:
        return self._evaluate_batch(batch, self.val_metrics, self.val_routing)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", self.val_metrics, self.val_routing)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any] | None:
        return self._evaluate_batch(batch, self.test_metrics, self.test_routing)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", self.test_metrics, self.test_routing)

    # ------------------------------------------------------------------ numeric faults
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Skip the step if the loss or the (unscaled) gradients are not finite.

        Runs after backward (and AMP unscaling), before gradient clipping and the update.
        Skipping = dropping all gradients (torch optimisers leave parameters without a
        gradient untouched, state included) and restoring BatchNorm statistics. Under fp16
        mixed precision the grad scaler already skips overflowing steps (a normal part of
        finding the scale), so there only a non-finite loss counts. The decision is shared
        by all ranks. The step still counts towards ``global_step`` and the LR schedule.
        """
        guard, self._guard = self._guard, None
        if guard is None or guard.loss_finite is None:
            return
        finite = guard.loss_finite
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            grad_norm = torch.nn.utils.get_total_norm(grads)
            self.log("train/grad_norm", grad_norm)
            if getattr(self.trainer.precision_plugin, "scaler", None) is None:
                finite = finite & torch.isfinite(grad_norm)
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(finite), all=False)
        if bad:
            optimizer.zero_grad(set_to_none=True)
            for buf, saved in zip(self._norm_buffers(), guard.buffers):
                buf.copy_(saved)
            self.nonfinite_steps += 1
            self._nonfinite_streak.append((self.global_step, guard.names))
        else:
            self._nonfinite_streak = []
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if bad:
            self._report_nonfinite()

    def _report_nonfinite(self) -> None:
        step, names = self._nonfinite_streak[-1]
        count, limit = len(self._nonfinite_streak), self.max_nonfinite_steps
        log.warning(
            "non-finite loss or gradients at global step %d (samples %s): optimiser step skipped "
            "(%d in a row%s)", step, names, count, f", stopping at {limit}" if limit else "",
        )
        if limit and count >= limit:
            first = self._nonfinite_streak[0][0]
            raise NonFiniteTrainingError(
                f"training stopped: the loss or its gradients were NaN/inf for {count} consecutive steps "
                f"(global steps {first}-{step}); the last bad batch held samples {names}. Check those "
                "samples (NaN/inf pixels?), lower module.lr, set trainer.gradient_clip_val, or allow "
                f"more with module.max_nonfinite_steps (now {limit}). checkpoints/last.ckpt holds the "
                "last periodic checkpoint."
            )

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
        # The teacher is a frozen copy of another checkpoint: do not store it again.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]
        checkpoint["mematte"] = {
            "net_config": self.hparams.net_config,
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "versions": environment_versions(),
            # for an exact continuation (resilience.collect_rng_state: weights_only-loadable)
            "rng": collect_rng_state(),
            "nonfinite_steps": self.nonfinite_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("mematte") or {}
        self._rng_to_restore = extra.get("rng")  # applied before the first resumed batch
        self.nonfinite_steps = int(extra.get("nonfinite_steps", 0))
        # Resuming a distillation run: the stored state has no teacher; use the one given.
        if self.teacher is not None:
            state = checkpoint.setdefault("state_dict", {})
            for key, value in self.teacher.state_dict().items():
                state.setdefault(f"teacher.{key}", value)
