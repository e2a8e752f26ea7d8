"""Optimiser parameter groups (layer-wise lr decay, no decay on norms) and the lr schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

# Module types whose parameters never get weight decay.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
)
_NO_DECAY_NAMES = ("pos_embed",)
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer index of a parameter for layer-wise lr decay (ViTMatte's rule).

    Patch/pos embedding → 0; ``backbone.blocks.i.*`` → i + 1 except the conv residual blocks
    and MEMatte's routers; everything else (decoder, residual blocks, routers) →
    ``num_layers + 1`` (full lr). The official MEMatte keeps its routers outside
    ``backbone.blocks`` (``backbone.routers.k``), which gives them the full lr; we hold them
    inside the routed block and keep that rate.
    """
    if not name.startswith("backbone."):
        return num_layers + 1
    if ".pos_embed" in name or ".patch_embed" in name:
        return 0
    match = _BLOCK_RE.search(name)
    if match and ".residual." not in name and ".router." not in name:
        return int(match.group(1)) + 1
    return num_layers + 1


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    num_layers: int | None = None,
) -> list[dict]:
    """Parameter groups with per-layer lr scale and weight decay off for norms and pos-embed.

    Args:
        model: the matting net (parameter names start with ``backbone.`` / ``decoder.``).
        lr: base learning rate.
        weight_decay: decay for weights that get it.
        layer_decay: lr scale ``layer_decay ** (num_layers + 1 − layer_id)``; 1 disables.
        num_layers: backbone depth (read from ``model.backbone.depth`` when None).

    Returns:
        Groups for ``torch.optim`` with ``lr``, ``weight_decay``, ``lr_scale`` and ``name``
        keys; the name (``embed``, ``block00`` … ``block11`` as in ``backbone.blocks.N``, ``head`` =
        decoder and the rest, ``all`` without layer decay; ``…_no_decay`` for norms and the
        pos-embed) labels the learning rates the LR monitor logs (``lr-AdamW/block11``).
    """
    if num_layers is None:
        num_layers = int(getattr(getattr(model, "backbone", None), "depth", 0))
    no_decay: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            no_decay.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (name in no_decay or any(k in name for k in _NO_DECAY_NAMES))
        layer_id = vit_layer_id(name, num_layers) if layer_decay != 1.0 else num_layers + 1
        scale = layer_decay ** (num_layers + 1 - layer_id)
        key = (layer_id, decay)
        if key not in groups:
            if layer_decay == 1.0:
                label = "all"
            else:
                label = "embed" if layer_id == 0 else "head" if layer_id > num_layers else f"block{layer_id - 1:02d}"
            groups[key] = {
                "name": label if decay else f"{label}_no_decay",
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def warmup_multistep_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float,
    milestones: Sequence[float],
    values: Sequence[float],
) -> float:
    """lr multiplier at ``step``: linear warm-up from ``warmup_factor``, then multi-step.

    ``milestones`` are fractions of ``total_steps`` (so one recipe fits any run length);
    ``values`` has one more entry than ``milestones`` (e.g. 1, 0.1, 0.05 as ViTMatte).
    """
    bounds = [int(math.floor(m * total_steps)) for m in milestones]
    level = sum(step >= b for b in bounds)
    factor = float(values[level])
    if warmup_steps > 0 and step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def warmup_multistep_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 250,
    warmup_factor: float = 0.001,
    milestones: Sequence[float] = (0.9, 0.96),
    values: Sequence[float] = (1.0, 0.1, 0.05),
) -> LambdaLR:
    """Per-step LambdaLR implementing :func:`warmup_multistep_factor`."""
    if len(values) != len(milestones) + 1:
        raise ValueError(
            f"lr schedule: values needs len(milestones)+1 entries, got {list(values)} for {list(milestones)}"
        )
    if any(not 0.0 <= m <= 1.0 for m in milestones):
        raise ValueError(f"lr schedule milestones are fractions of the run in [0, 1], got {list(milestones)}")
    return LambdaLR(
        optimizer,
        lambda step: warmup_multistep_factor(
            step, total_steps, warmup_steps, warmup_factor, milestones, values
        ),
    )
