"""The one entry to every format: detect it, read it into our layout, check every key and load
it into a net (:func:`read_weights`, :func:`apply_weights`, :func:`net_from_any`,
:func:`init_net_from`)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from mematte.checkpoints.backbone import adapt_backbone_state, read_backbone_weights
from mematte.checkpoints.common import (
    FORMAT_ALIASES,
    NetWeights,
    _normalise_keys,
    _read_file,
    _unwrap,
    classify_state,
)
from mematte.checkpoints.hf import read_hf_weights, resolve_source
from mematte.checkpoints.native import read_mematte_weights
from mematte.checkpoints.netconfig import build_net, resolve_net_config
from mematte.checkpoints.official import read_official_weights

log = logging.getLogger("mematte")

# Keys a ViTMatte checkpoint may lack or carry when it initialises a MEMatte student:
# routers and LTRMs are new; routed global blocks drop the teacher's rel-pos tables.
_FRESH_IN_STUDENT = re.compile(r"\.(router|ltrm)\.")
_DROPPED_FROM_TEACHER = re.compile(r"blocks\.\d+\.attn\.rel_pos_[hw]$")
# Never required from a file: the official code keeps the normalisation out of its state
# (non-persistent buffers) and BN step counters do not affect the forward pass.
_OPTIONAL = re.compile(r"^pixel_(mean|std)$|\.num_batches_tracked$")
_LIST_LIMIT = 20


def _sniff(path: Path, trust: bool = False) -> tuple[str, Any]:
    """(format, loaded object or None) of a file or folder, loading a file only once."""
    if path.is_dir() or ((path.parent / "config.json").is_file() and path.suffix in (".safetensors", ".bin")):
        return "hf", None
    obj = _read_file(path, trust=trust)
    if isinstance(obj, Mapping) and "state_dict" in obj and "mematte" in obj:
        return "mematte", obj
    return classify_state(_normalise_keys(_unwrap(obj, path))[0]), obj


def detect_format(path: str | Path, *, trust: bool = False) -> str:
    """The format of a file, folder or hub id (one of :data:`FORMATS`), read from its contents."""
    return _sniff(resolve_source(path), trust)[0]


def read_weights(path: str | Path, format: str = "auto", *, trust: bool = False) -> NetWeights:
    """Read any supported file into our key layout.

    Args:
        path: a file (``.ckpt``, ``.pth``, ``.pt``, ``.bin``, ``.safetensors``), an HF folder,
            or a Hugging Face hub id (``owner/name[@revision]``, read from the local HF cache:
            :func:`~mematte.checkpoints.hf.resolve_source`).
        format: ``auto`` (detect) or one of :data:`FORMAT_ALIASES` (``timm``/``dino``/``mae``
            = ``backbone``).
        trust: unpickle the file fully (``weights_only=False``; runs code stored in it). Only
            for trusted files whose weights live inside pickled objects; by default no code
            from the file runs (:func:`~mematte.checkpoints.common._read_file`).
    """
    path = resolve_source(path)
    if format not in FORMAT_ALIASES:
        raise ValueError(f"unknown format={format!r}; choose one of {list(FORMAT_ALIASES)}")
    fmt, obj = (FORMAT_ALIASES[format], None) if FORMAT_ALIASES[format] else _sniff(path, trust)
    if fmt == "mematte":
        return read_mematte_weights(path, _loaded=obj)
    if fmt == "hf":
        return read_hf_weights(path)
    if obj is None:
        obj = _read_file(path, trust=trust)
    return (read_official_weights if fmt == "official" else read_backbone_weights)(path, _loaded=obj)


class WeightsMismatchError(ValueError):
    """Weights that do not fit the net; the message lists every offending key."""


def _groups(keys: Iterable[str]) -> list[str]:
    """Summarise keys by the module they belong to (for log lines)."""
    out: Counter[str] = Counter()
    for key in keys:
        if m := re.match(r"^(backbone\.blocks\.\d+\.(router|ltrm|residual))\.", key):
            out[m.group(1)] += 1
        elif key.startswith("decoder."):
            out["decoder"] += 1
        elif re.search(r"rel_pos_[hw]$", key):
            out["rel-pos tables"] += 1
        else:
            out[key] += 1
    return sorted(out)


def _listing(title: str, keys: list[str]) -> str:
    more = " …" if len(keys) > _LIST_LIMIT else ""
    return f"  {title} ({len(keys)}): " + ", ".join(keys[:_LIST_LIMIT]) + more


def _hints(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """What to do about a mismatch, one line each."""
    hints = []
    if any(_FRESH_IN_STUDENT.search(k) for k in unexpected):
        hints.append(
            "the file is a routed MEMatte net: build it with model=mematte (router=local_global ltrm=conv)"
        )
    if any(_FRESH_IN_STUDENT.search(k) for k in missing):
        hints.append(
            "the net is routed but the file has no routers: use init_from= (routers and LTRMs start "
            "fresh) or router=none"
        )
    if mismatched or not hints:
        hints.append("is it a checkpoint of the same backbone size? backbone=vit_tiny|vit_small|vit_base")
    return [f"  ({h})" for h in hints]


def apply_weights(net: nn.Module, weights: NetWeights, *, partial: bool = False) -> dict[str, list[str]]:
    """Load converted weights into ``net``, checking every key first.

    Args:
        net: the target net.
        weights: from :func:`read_weights`.
        partial: initialisation rules (``init_from=``): a routed net's routers/LTRMs may be
            missing from the file and the file's rel-pos tables that routed blocks lack are
            dropped; backbone-only weights leave everything they do not hold fresh. Without
            ``partial`` every key must match (pixel statistics and BN step counters may be
            missing: the net's own are kept).

    Returns:
        ``{"loaded": [...], "fresh": [...], "dropped": [...]}`` key lists.

    Raises:
        WeightsMismatchError: missing, unexpected or mis-shaped keys, all listed in one message
            with the detected format.
    """
    own = net.state_dict()
    state = adapt_backbone_state(weights.state, own) if weights.format == "backbone" else weights.state
    missing = [k for k in own if k not in state and not _OPTIONAL.search(k)]
    unexpected = [k for k in state if k not in own]
    if partial:
        if weights.format == "backbone":
            missing = []
        else:
            missing = [k for k in missing if not _FRESH_IN_STUDENT.search(k)]
        unexpected = [k for k in unexpected if not _DROPPED_FROM_TEACHER.search(k)]
    elif not weights.full:
        raise WeightsMismatchError(
            f"{weights.source} ({weights.description}) holds no decoder: it can only initialise a net "
            "(init_from=PATH when training), not be evaluated"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    loaded = {k: v for k, v in state.items() if k in own}
    if not loaded:
        raise WeightsMismatchError(
            f"{weights.source} ({weights.description}) shares no key with the net (file keys: "
            + ", ".join(list(state)[:8]) + ")"
        )
    if missing or unexpected or mismatched:
        verb = "initialise the net from" if partial else "load the net from"
        lines = [f"cannot {verb} {weights.source} (detected: {weights.description}):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
            if keys:
                lines.append(_listing(title, keys))
        lines.extend(_hints(missing, unexpected, mismatched))
        raise WeightsMismatchError("\n".join(lines))
    net.load_state_dict(loaded, strict=False)
    return {
        "loaded": list(loaded),
        "fresh": [k for k in own if k not in state],
        "dropped": [k for k in state if k not in own] + list(weights.dropped),
    }


def load_net_weights(
    path: str | Path,
    net: nn.Module | None = None,
    *,
    config: DictConfig | Mapping[str, Any] | None = None,
    format: str = "auto",
    partial: bool | None = None,
    trust: bool = False,
) -> nn.Module:
    """Load weights from any supported file into ``net`` (built when not given) and return it.

    Args:
        path: mematte checkpoint, official ViTMatte/MEMatte file, HF folder or ViT backbone file.
        net: the target net; None builds one from ``config``, else from the config the file
            stores (mematte, HF) or implies (official: :func:`infer_net_config`; backbone files:
            a ViTMatte of that width with a fresh decoder).
        config: model config (a ``_target_`` tree, e.g. ``cfg.model``) used when ``net`` is None.
        format: ``auto`` or a :data:`FORMAT_ALIASES` name.
        partial: initialisation rules (see :func:`apply_weights`); default: only for
            backbone-only files.
        trust: see :func:`read_weights`.

    Raises:
        WeightsMismatchError: the weights do not fit (every offending key listed).
    """
    weights = read_weights(path, format, trust=trust)
    if net is None:
        net = build_net(resolve_net_config(weights, config))
    apply_weights(net, weights, partial=(not weights.full) if partial is None else partial)
    return net


def net_from_any(
    path: str | Path, model_cfg: DictConfig | Mapping[str, Any] | None = None, *, trust: bool = False
) -> nn.Module:
    """A ready net from any full-net file, folder or hub id (``eval.py`` / ``predict.py``
    ``ckpt_path=``).

    Mematte checkpoints rebuild from their stored config, HF folders from ``config.json``,
    official files from ``model_cfg`` or, without one, from their shapes. ``trust``: see
    :func:`read_weights`.
    """
    return net_from_weights(read_weights(path, trust=trust), model_cfg)


def net_from_weights(
    weights: NetWeights, model_cfg: DictConfig | Mapping[str, Any] | None = None
) -> nn.Module:
    """Build the net :class:`NetWeights` describe and load them (see :func:`net_from_any`)."""
    if not weights.full:
        raise WeightsMismatchError(
            f"{weights.source} ({weights.description}) holds no decoder: it can only initialise a net "
            "(init_from=PATH when training), not be evaluated"
        )
    # every parameter is about to be overwritten (partial=False refuses missing ones), so
    # drawing random values first would only slow the start of predict.py / eval.py
    net = build_net(resolve_net_config(weights, model_cfg), init_weights=False)
    loaded = set(apply_weights(net, weights, partial=False)["loaded"])
    unset = [name for name, _ in net.named_parameters() if name not in loaded]
    if unset:  # an optional key that is a parameter would be left uninitialised
        raise WeightsMismatchError(
            f"{weights.source} ({weights.description}) leaves parameters unset: " + ", ".join(unset[:_LIST_LIMIT])
        )
    return net


def init_net_from(net: nn.Module, path: str | Path, format: str = "auto") -> None:
    """Initialise a net (ViTMatte or MEMatte) from any supported file's weights.

    A MEMatte student takes a ViTMatte checkpoint (ours, official or HF): its routers and LTRMs
    stay freshly initialised and the checkpoint's global-block rel-pos tables, which routed
    blocks do not have, are dropped. A ViT backbone file (timm / DINO / MAE) initialises the
    backbone only (trimap channel zero, class token dropped, grid resized); the decoder,
    residual blocks and rel-pos tables stay fresh. Any other missing, unexpected or mis-shaped
    key is an error that lists them all.
    """
    weights = read_weights(path, format)
    result = apply_weights(net, weights, partial=True)
    dropped_rel = [k for k in result["dropped"] if _DROPPED_FROM_TEACHER.search(k)]
    others = len(result["dropped"]) - len(dropped_rel)
    log.info(
        "initialised from %s (%s, %d tensors); fresh: %s; dropped: %d rel-pos tables%s",
        path, weights.format, len(result["loaded"]),
        ", ".join(_groups(k for k in result["fresh"] if not _OPTIONAL.search(k))) or "none",
        len(dropped_rel), f", {others} other keys" if others else "",
    )


def load_teacher(ckpt: str | Path | None) -> nn.Module | None:
    """A frozen teacher net (eval mode, no gradients) from a checkpoint, or None without one.

    Any full-net format works (mematte, official ViTMatte, Hugging Face), see :func:`net_from_any`.
    """
    if not ckpt:
        return None
    teacher = net_from_any(ckpt)
    teacher.eval().requires_grad_(False)
    log.info("distillation teacher loaded from %s", ckpt)
    return teacher
