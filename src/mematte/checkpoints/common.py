"""What every format reader shares: the :class:`NetWeights` record, safe file reading,
unwrapping the state dict from its container, and telling layouts apart by their keys."""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

log = logging.getLogger("mematte")

WeightFormat = Literal["mematte", "official", "hf", "backbone"]
FORMATS: tuple[str, ...] = ("mematte", "official", "hf", "backbone")
# What users may ask for (CLI --format): timm / DINO / MAE files share the backbone layout.
FORMAT_ALIASES: dict[str, str | None] = {
    "auto": None,
    "mematte": "mematte",
    "official": "official",
    "hf": "hf",
    "backbone": "backbone",
    "timm": "backbone",
    "dino": "backbone",
    "mae": "backbone",
}
FORMAT_NAMES: dict[str, str] = {
    "mematte": "mematte training checkpoint",
    "official": "official ViTMatte/MEMatte (detectron2) weights",
    "hf": "Hugging Face VitMatteForImageMatting weights",
    "backbone": "ViT backbone weights (timm / DINO / MAE), backbone init only",
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# VitMatteImageProcessor's defaults (IMAGENET_STANDARD_MEAN/STD) when a folder has no
# preprocessor_config.json.
HF_DEFAULT_MEAN = [0.5, 0.5, 0.5]
HF_DEFAULT_STD = [0.5, 0.5, 0.5]


@dataclass
class NetWeights:
    """Weights read from a file, renamed to our key layout.

    Attributes:
        state: our keys (``backbone.blocks.2.router.in_conv.1.weight`` …) → tensors.
        format: which reader produced them (see :data:`FORMATS`).
        source: the file or folder read.
        net_config: the resolved model config the file stores or describes (mematte, hf);
            None when it must be inferred from shapes (:func:`infer_net_config`).
        dropped: keys of the file that were ignored on purpose (teacher, class token, head …).
        step: the training step the file records (mematte checkpoints), else None.
    """

    state: dict[str, Tensor]
    format: str
    source: Path
    net_config: dict[str, Any] | None = None
    dropped: list[str] = field(default_factory=list)
    step: int | None = None

    @property
    def full(self) -> bool:
        """True when the weights cover a whole matting net (not only a backbone)."""
        return self.format != "backbone"

    @property
    def description(self) -> str:
        """Human-readable format name for messages."""
        return FORMAT_NAMES.get(self.format, self.format)


class PickledObject:
    """Stand-in for a class a checkpoint pickles besides its tensors (an optimiser scheduler, a
    trainer's bookkeeping): it keeps the arguments and state it is given and runs no code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {type(self).__module__}.{type(self).__qualname__}>"


# numpy values torch's weights-only loader accepts once allowed (torch.load's documentation
# lists them): scalars such as a numpy ``iteration`` and arrays are data, not code.
_NUMPY_DATA = re.compile(r"^numpy\.(_core|core)\.multiarray\.(_reconstruct|scalar)$|^numpy\.(ndarray|dtype)$|^numpy\.dtypes\.\w+$")


def _resolve_numpy(name: str) -> Any:
    import importlib

    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _stand_ins(path: Path) -> list[tuple[Any, str]]:
    """(object, pickled name) for every global a weights-only load of ``path`` refuses: the real
    numpy data types, and a :class:`PickledObject` subclass for anything else."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    out = []
    for name in names:
        if _NUMPY_DATA.match(name):
            out.append((_resolve_numpy(name), name))
        else:
            module, _, qualname = name.rpartition(".")
            stub = type(qualname, (PickledObject,), {"__module__": module, "__qualname__": qualname})
            out.append((stub, name))
    if any(_NUMPY_DATA.match(name) for name in names):
        # a numpy scalar's dtype class (numpy.dtypes.Int64DType…) is only met while building it
        import numpy as np

        out.extend(
            (cls, f"numpy.dtypes.{cls.__name__}")
            for cls in vars(np.dtypes).values()
            if isinstance(cls, type) and issubclass(cls, np.dtype)
        )
    return out


def _read_file(path: Path, *, trust: bool = False) -> Any:
    """Load a torch or safetensors file on CPU.

    No code from the file runs unless ``trust``: tensors and plain containers load as they are
    (``weights_only=True``), and the Python objects a released training file carries besides its
    weights (detectron2's optimiser / scheduler / trainer state) become inert
    :class:`PickledObject` stand-ins. ``trust=True`` unpickles the file fully
    (``weights_only=False``), which can run code stored in it: only for files one trusts, and
    only needed when the weights themselves live inside pickled objects (a whole model saved
    with ``torch.save(model)``).
    """
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (pass a mematte .ckpt, an official .pth, a ViT backbone "
            "file, a Hugging Face folder or hub id)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise RuntimeError(f"cannot read {path}: {err}. Is the file complete?") from err
    if trust:
        log.warning(
            "trust_checkpoint: unpickling %s fully (weights_only=False); this runs any code stored "
            "in the file, so do it only for files from a source you trust", path,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise RuntimeError(f"cannot read {path}: {err}. Is the file complete?") from err
    try:
        # DINO's full checkpoints store their argparse options next to the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or carrying Python objects
        first_error = err
    try:
        stand_ins = _stand_ins(path)
        if not stand_ins:
            raise first_error
        with torch.serialization.safe_globals([argparse.Namespace, *stand_ins]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"cannot read {path}: {err}. Is the file complete? If it stores Python objects that "
            "hold the weights and you trust the file, pass trust_checkpoint=true (predict.py / "
            "eval.py) or --trust-checkpoint (python -m mematte.convert)"
        ) from first_error
    skipped = sorted(name for stub, name in stand_ins if isinstance(stub, type) and issubclass(stub, PickledObject))
    if skipped:
        log.info(
            "%s: read without running code from the file; %d pickled Python object type(s) kept as "
            "inert stand-ins (optimiser / scheduler state, not needed for the weights): %s",
            path, len(skipped), ", ".join(skipped),
        )
    return obj


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict inside a file: ``{'model': sd}`` (detectron2, MAE), ``{'state_dict': sd}``,
    DINO's ``{'teacher': sd}`` (its evaluation default), or a bare state dict."""
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, Mapping) and _is_state_dict(obj.get(key)):
            return dict(obj[key])
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, torch.nn.Module):  # torch.save(model), read with trust_checkpoint
        return dict(obj.state_dict())
    keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    hint = ""
    if isinstance(obj, PickledObject) or (
        isinstance(obj, Mapping) and any(isinstance(v, PickledObject) for v in obj.values())
    ):
        hint = (
            ". Its weights may live inside pickled Python objects, which are not read without "
            "trust: if you trust the file, pass trust_checkpoint=true (predict.py / eval.py) or "
            "--trust-checkpoint (python -m mematte.convert)"
        )
    raise ValueError(
        f"{path} holds no state dict (top-level entries: {keys}); expected {{'model': state_dict}}, "
        f"a Lightning checkpoint or a bare state dict{hint}"
    )


def _strip_prefixes(
    state: dict[str, Tensor], prefixes: Iterable[str] = ("module.", "net.")
) -> dict[str, Tensor]:
    """Remove wrapper prefixes (DDP's ``module.``, a Lightning module's ``net.``) shared by all keys."""
    prefixes = tuple(prefixes)
    changed = True
    while changed and state:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


# The distillation teacher: official MEMatte's `teacher_backbone.*`, a Lightning module's `teacher.*`.
_JUNK = re.compile(r"^(teacher_backbone|teacher)\.")


def _normalise_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Strip wrapper prefixes and drop the distillation teacher: (state, dropped keys).

    DDP's ``module.`` comes first (it wraps the teacher too), then the teacher goes (official
    MEMatte's ``teacher_backbone.*``, a Lightning module's ``teacher.*``), then ``net.``.
    """
    state = _strip_prefixes(state, ("module.",))
    kept = {k: v for k, v in state.items() if not _JUNK.match(k)}
    return _strip_prefixes(kept), [k for k in state if _JUNK.match(k)]


_HF_PREFIXES = ("backbone.embeddings.", "backbone.encoder.layer.")


def classify_state(state: Mapping[str, Tensor]) -> str:
    """Which layout a (prefix-stripped) state dict follows: ``official``, ``hf`` or ``backbone``.

    Our own key layout (a bare mematte state dict) counts as ``official``: the two differ only in
    the router / LTRM names, which the official reader maps and leaves ours alone.
    """
    keys = list(state)
    if any(k.startswith(_HF_PREFIXES) for k in keys):
        return "hf"
    has_decoder = any(k.startswith("decoder.") for k in keys)
    if has_decoder and "backbone.patch_embed.proj.weight" in state:
        return "official"
    vit_key = re.compile(r"^(backbone\.)?(patch_embed\.proj\.weight|blocks\.0\.attn\.qkv\.weight)$")
    if any(vit_key.match(k) for k in keys):
        return "backbone"
    raise ValueError(
        "unknown weight layout (first keys: " + ", ".join(keys[:8]) + "); supported: mematte "
        "checkpoints, official ViTMatte/MEMatte files, Hugging Face VitMatte folders, "
        "timm/DINO/MAE ViT state dicts"
    )


def _split_pos_embed(num_tokens: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a position embedding with ``num_tokens`` entries."""
    for prefix in (0, 1, 2):
        side = math.isqrt(num_tokens - prefix)
        if side * side == num_tokens - prefix:
            return prefix, side
    raise ValueError(f"position embedding of {num_tokens} tokens is not a square grid plus class tokens")
