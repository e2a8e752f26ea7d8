"""The official ViTMatte (hustvl/ViTMatte) and MEMatte (linyiheng123/MEMatte) detectron2 files:
``{'model': state_dict}`` in their key layout, read and written."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mematte.checkpoints.common import (
    FORMAT_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NetWeights,
    _normalise_keys,
    _read_file,
    _unwrap,
    classify_state,
)

log = logging.getLogger("mematte")


# Official MEMatte (linyiheng123/MEMatte, modeling/backbone/vit.py) keeps the routing parts
# outside our per-block layout:
#   backbone.routers.{k}.{in_conv.{0,1},out_conv.{0,2,4}}  the k-th router, applied before the
#       k-th block that has an `efficient_block` (ViT.forward's `count`) → our
#       backbone.blocks.{i}.router.*  (i = that block's index; same Linear/LayerNorm layout)
#   backbone.blocks.{i}.efficient_block.{fc1,dwconv,fc2,eca.conv}  the LTRM of block i
#       → backbone.blocks.{i}.ltrm.*
# Its global blocks have no rel-pos tables; `teacher_backbone.*` (the frozen ViTMatte teacher,
# also added by its pretrained/preprocess.py) is not part of the net. ViTMatte
# (hustvl/ViTMatte) uses our names as they are; neither stores pixel_mean/std (non-persistent).
_OFFICIAL_ROUTER = re.compile(r"^backbone\.routers\.(\d+)\.(.+)$")
_OFFICIAL_LTRM = re.compile(r"^backbone\.blocks\.(\d+)\.efficient_block\.(.+)$")


def official_to_ours(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official ViTMatte / MEMatte state dict to our layout.

    Args:
        state: official keys (``module.`` prefix and ``teacher_backbone.*`` allowed).

    Returns:
        (our state, dropped keys).

    Raises:
        ValueError: the number of routers differs from the number of LTRM blocks.
    """
    state, dropped = _normalise_keys(dict(state))
    ltrm_blocks = sorted({int(m.group(1)) for k in state if (m := _OFFICIAL_LTRM.match(k))})
    routers = sorted({int(m.group(1)) for k in state if (m := _OFFICIAL_ROUTER.match(k))})
    if routers and routers != list(range(len(ltrm_blocks))):
        raise ValueError(
            f"official MEMatte weights with routers {routers} but efficient blocks {ltrm_blocks}: "
            "router k belongs to the k-th efficient block, so the counts must match"
        )
    ours: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _OFFICIAL_ROUTER.match(key):
            key = f"backbone.blocks.{ltrm_blocks[int(m.group(1))]}.router.{m.group(2)}"
        elif m := _OFFICIAL_LTRM.match(key):
            key = f"backbone.blocks.{m.group(1)}.ltrm.{m.group(2)}"
        elif key in ("pixel_mean", "pixel_std"):
            value = value.reshape(1, 3, 1, 1)  # detectron2 keeps (3, 1, 1)
        ours[key] = value
    return ours, dropped


def ours_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`official_to_ours` (pixel statistics left out, as the official code does)."""
    routed = sorted(
        {int(m.group(1)) for k in state if (m := re.match(r"^backbone\.blocks\.(\d+)\.router\.", k))}
    )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        if m := re.match(r"^backbone\.blocks\.(\d+)\.router\.(.+)$", key):
            key = f"backbone.routers.{routed.index(int(m.group(1)))}.{m.group(2)}"
        elif m := re.match(r"^backbone\.blocks\.(\d+)\.ltrm\.(.+)$", key):
            key = f"backbone.blocks.{m.group(1)}.efficient_block.{m.group(2)}"
        out[key] = value
    return out


def read_official_weights(path: str | Path, *, _loaded: Any = None) -> NetWeights:
    """An official ViTMatte / MEMatte (detectron2) file, or a bare state dict in our layout."""
    path = Path(path)
    raw = _unwrap(_read_file(path) if _loaded is None else _loaded, path)
    state, dropped = official_to_ours(raw)
    layout = classify_state(state)
    if layout != "official":
        raise ValueError(
            f"{path} is not an official ViTMatte/MEMatte file (it looks like {FORMAT_NAMES[layout]}); "
            "use --format auto"
        )
    return NetWeights(state=state, format="official", source=path, dropped=dropped)


def _official_eca_kernel(dim: int) -> int:
    """The ECA width the official MEMatte LTRM derives from the channel count (odd)."""
    k = int(abs(math.log2(dim) / 2 + 0.5))
    return k if k % 2 else k + 1


def _check_official_mematte(net: nn.Module) -> None:
    """Refuse routed parts the official MEMatte code cannot express; warn about shape drift."""
    from mematte.models.ltrm import ConvTokenRefiner
    from mematte.models.router import LocalGlobalRouter

    drift = []
    for i in net.backbone.routed_block_indexes:
        block = net.backbone.blocks[i]
        ltrm = block.ltrm
        if type(block.router) is not LocalGlobalRouter:
            raise ValueError(
                f"block {i} uses {type(block.router).__name__}: official MEMatte has only the "
                "local-global router (router=local_global)"
            )
        full_ltrm = isinstance(ltrm, ConvTokenRefiner) and ltrm.dwconv is not None and ltrm.eca is not None
        if not full_ltrm or not ltrm.eca.shortcut:
            raise ValueError(f"block {i}: official MEMatte has only the full LTRM (ltrm=conv)")
        dim = ltrm.fc2.out_features
        official = (2 * dim, 5, _official_eca_kernel(dim))
        if (ltrm.fc1.out_features, ltrm.dwconv.kernel_size[0], ltrm.eca.conv.kernel_size[0]) != official:
            drift.append(i)
    if drift:
        # The official LTRM hard-codes expand 2 and a 5×5 dwconv and derives the ECA width from C.
        log.warning(
            "blocks %s: LTRM widths differ from the official code's (expand 2, dwconv 5, ECA %d for "
            "C=%d): the file loads here but not into the official MEMatte model",
            drift, _official_eca_kernel(net.backbone.embed_dim), net.backbone.embed_dim,
        )


def export_official(net: nn.Module, path: str | Path, flavour: str | None = None) -> Path:
    """Write ``{'model': state_dict}`` in the official ViTMatte / MEMatte layout.

    Args:
        net: a :class:`~mematte.models.matting_net.MattingNet`.
        path: output ``.pth``.
        flavour: ``"vitmatte"`` (no routers) or ``"mematte"`` (routers as ``backbone.routers.k``,
            LTRMs as ``efficient_block``); default: from the net.

    Raises:
        ValueError: the flavour does not match the net, or its routing parts have no official form.
    """
    routed = net.backbone.routed_block_indexes
    flavour = flavour or ("mematte" if routed else "vitmatte")
    if flavour not in ("mematte", "vitmatte"):
        raise ValueError(f"flavour={flavour!r}: choose mematte or vitmatte")
    if flavour == "vitmatte" and routed:
        raise ValueError(
            f"the net routes blocks {routed}: a ViTMatte file cannot hold routers (flavour='mematte')"
        )
    if flavour == "mematte":
        if not routed:
            raise ValueError("the net has no routers: export it with flavour='vitmatte'")
        _check_official_mematte(net)
    mean, std = net.pixel_mean.flatten().tolist(), net.pixel_std.flatten().tolist()
    if not (all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(mean + std, IMAGENET_MEAN + IMAGENET_STD))):
        log.warning(
            "the net normalises with mean=%s std=%s; the official files do not store normalisation "
            "(their code uses ImageNet statistics)", mean, std,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in ours_to_official(net.state_dict()).items()}
    torch.save({"model": state}, path)
    return path
