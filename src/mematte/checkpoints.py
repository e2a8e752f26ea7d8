"""Reading and writing weights: mematte training checkpoints, teachers, student initialisation.

A mematte checkpoint is a Lightning checkpoint whose ``"mematte"`` entry stores the resolved
net config, so a checkpoint alone rebuilds its model (:func:`net_from_checkpoint`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger("mematte")

# Keys a ViTMatte checkpoint may lack or carry when it initialises a MEMatte student:
# routers and LTRMs are new; routed global blocks drop the teacher's rel-pos tables.
_FRESH_IN_STUDENT = re.compile(r"\.(router|ltrm)\.")
_DROPPED_FROM_TEACHER = re.compile(r"blocks\.\d+\.attn\.rel_pos_[hw]$")


def build_net(model_cfg: DictConfig | dict) -> nn.Module:
    """Instantiate the matting net from its (possibly resolved) config."""
    return instantiate(model_cfg, _convert_="partial")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint written by ``mematte.cli.train``, with a clear error if unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (pass ckpt_path=<run>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt / truncated file
        raise RuntimeError(f"cannot read checkpoint {path}: {err}. Is the file complete?") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "mematte" not in ckpt:
        raise ValueError(
            f"{path} is not a mematte training checkpoint (no 'state_dict'/'mematte' entries)"
        )
    return ckpt


def net_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The net's weights from a training checkpoint (``net.`` prefix removed, teacher dropped)."""
    return {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def net_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the net from the config stored in a checkpoint and load its weights."""
    net_config = ckpt["mematte"].get("net_config")
    if not net_config:
        raise ValueError("checkpoint stores no net config; it was not written by mematte.train")
    net = build_net(net_config)
    net.load_state_dict(net_state(ckpt), strict=True)
    return net


def load_teacher(ckpt: str | Path | None) -> nn.Module | None:
    """A frozen teacher net (eval mode, no gradients) from a checkpoint, or None without one."""
    if not ckpt:
        return None
    teacher = net_from_checkpoint(load_checkpoint(ckpt))
    teacher.eval().requires_grad_(False)
    log.info("distillation teacher loaded from %s", ckpt)
    return teacher


def init_net_from(net: nn.Module, path: str | Path) -> None:
    """Initialise a net (ViTMatte or MEMatte) from a mematte checkpoint's weights.

    A MEMatte student takes a ViTMatte checkpoint: its routers and LTRMs stay freshly
    initialised and the checkpoint's global-block rel-pos tables, which routed blocks do not
    have, are dropped. Any other missing, unexpected or mis-shaped key is an error that lists
    them all.
    """
    state = net_state(load_checkpoint(path))
    own = net.state_dict()
    missing = [k for k in own if k not in state and not _FRESH_IN_STUDENT.search(k)]
    unexpected = [k for k in state if k not in own and not _DROPPED_FROM_TEACHER.search(k)]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"cannot initialise the net from {path}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
        lines.append("  (is it a checkpoint of the same backbone size? backbone=vit_tiny|vit_small|vit_base)")
        raise ValueError("\n".join(lines))
    loaded = {k: v for k, v in state.items() if k in own}
    net.load_state_dict(loaded, strict=False)
    fresh = sorted({k.split(".router.")[0].split(".ltrm.")[0] for k in own if k not in state})
    dropped = [k for k in state if k not in own]
    log.info(
        "initialised from %s (%d tensors); fresh: %s; dropped: %d rel-pos tables",
        path, len(loaded), ", ".join(fresh) or "none", len(dropped),
    )


__all__ = [
    "build_net",
    "init_net_from",
    "load_checkpoint",
    "load_teacher",
    "net_from_checkpoint",
    "net_state",
]
