"""Reading and writing weights: mematte checkpoints, official ViTMatte/MEMatte files, Hugging Face
VitMatte folders and pretrained ViT backbones (timm / DINO / MAE).

A mematte checkpoint is a Lightning checkpoint whose ``"mematte"`` entry stores the resolved
net config, so a checkpoint alone rebuilds its model (:func:`net_from_checkpoint`).

Every other format is first converted to our key layout (:class:`NetWeights`), then loaded with
one set of checks (:func:`apply_weights`):

=========== ======================================================= ==========================
format      what it is                                              net config from
=========== ======================================================= ==========================
mematte     ``train.py`` checkpoint (``state_dict`` + ``mematte``)  the checkpoint
official    hustvl/ViTMatte or linyiheng123/MEMatte detectron2 file the tensor shapes
            (``{'model': sd}`` or bare ``sd``, maybe ``module.``)
hf          ``save_pretrained`` folder of ``VitMatteForImageMatting`` ``config.json``
backbone    timm / DINO / MAE ViT state dict (backbone init only)   the tensor shapes
=========== ======================================================= ==========================

Entry points: :func:`load_net_weights` (detects the format, optionally builds the net),
:func:`net_from_any` (eval / predict: a ready net from any full-net file),
:func:`init_net_from` (``init_from=``: student / backbone initialisation),
:func:`export_official` (write the official layout) and :func:`save_net_checkpoint`
(write a mematte checkpoint that ``eval.py`` / ``predict.py`` read).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

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

# Keys a ViTMatte checkpoint may lack or carry when it initialises a MEMatte student:
# routers and LTRMs are new; routed global blocks drop the teacher's rel-pos tables.
_FRESH_IN_STUDENT = re.compile(r"\.(router|ltrm)\.")
_DROPPED_FROM_TEACHER = re.compile(r"blocks\.\d+\.attn\.rel_pos_[hw]$")
# Never required from a file: the official code keeps the normalisation out of its state
# (non-persistent buffers) and BN step counters do not affect the forward pass.
_OPTIONAL = re.compile(r"^pixel_(mean|std)$|\.num_batches_tracked$")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# VitMatteImageProcessor's defaults (IMAGENET_STANDARD_MEAN/STD) when a folder has no
# preprocessor_config.json.
HF_DEFAULT_MEAN = [0.5, 0.5, 0.5]
HF_DEFAULT_STD = [0.5, 0.5, 0.5]
# conf/backbone/*.yaml: heads per width (a backbone without rel-pos tables does not show them).
_DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}
_LIST_LIMIT = 20


# =========================================================================== mematte ckpts
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
    """A frozen teacher net (eval mode, no gradients) from a checkpoint, or None without one.

    Any full-net format works (mematte, official ViTMatte, Hugging Face), see :func:`net_from_any`.
    """
    if not ckpt:
        return None
    teacher = net_from_any(ckpt)
    teacher.eval().requires_grad_(False)
    log.info("distillation teacher loaded from %s", ckpt)
    return teacher


def save_net_checkpoint(
    net: nn.Module,
    net_config: DictConfig | Mapping[str, Any],
    path: str | Path,
    *,
    source: str | Path | None = None,
    source_format: str | None = None,
) -> Path:
    """Write a mematte checkpoint (what ``eval.py ckpt_path=`` / ``predict.py`` read).

    Only weights and the resolved net config: no optimiser state, so it is a start point
    (``init_from=``, ``teacher.ckpt=``) or an evaluation target, not a run to resume.

    Args:
        net: the net whose ``state_dict`` is stored (under ``net.``, as the Lightning module does).
        net_config: its model config (``_target_`` tree); stored resolved.
        path: output file.
        source, source_format: where the weights came from (recorded for provenance).

    Returns:
        the written path.
    """
    import mematte

    if isinstance(net_config, DictConfig):
        net_config = OmegaConf.to_container(net_config, resolve=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "state_dict": {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()},
        "mematte": {
            "net_config": dict(net_config),
            "converted_from": str(source) if source is not None else None,
            "source_format": source_format,
            "versions": {"mematte": mematte.__version__, "torch": str(torch.__version__)},
        },
        "global_step": 0,
        "epoch": 0,
    }
    torch.save(ckpt, path)
    return path


# =========================================================================== file reading
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


def _read_file(path: Path) -> Any:
    """Load a torch or safetensors file on CPU without executing arbitrary pickles."""
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (pass a mematte .ckpt, an official .pth, a ViT backbone "
            "file or a Hugging Face folder)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # DINO's full checkpoints store their argparse options next to the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or foreign pickle
        raise RuntimeError(
            f"cannot read {path}: {err}. Is the file complete? If it stores Python objects besides "
            "tensors and you trust it, re-save its state dict: "
            "torch.save(torch.load(p, weights_only=False)['model'], 'weights.pth')"
        ) from err


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
    keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{path} holds no state dict (top-level entries: {keys}); expected {{'model': state_dict}}, "
        "a Lightning checkpoint or a bare state dict"
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


def _sniff(path: Path) -> tuple[str, Any]:
    """(format, loaded object or None) of a file or folder, loading a file only once."""
    if path.is_dir() or ((path.parent / "config.json").is_file() and path.suffix in (".safetensors", ".bin")):
        return "hf", None
    obj = _read_file(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and "mematte" in obj:
        return "mematte", obj
    return classify_state(_normalise_keys(_unwrap(obj, path))[0]), obj


def detect_format(path: str | Path) -> str:
    """The format of a file or folder (one of :data:`FORMATS`), read from its contents."""
    return _sniff(Path(path))[0]


def read_weights(path: str | Path, format: str = "auto") -> NetWeights:
    """Read any supported file into our key layout.

    Args:
        path: a file (``.ckpt``, ``.pth``, ``.pt``, ``.bin``, ``.safetensors``) or an HF folder.
        format: ``auto`` (detect) or one of :data:`FORMAT_ALIASES` (``timm``/``dino``/``mae``
            = ``backbone``).
    """
    path = Path(path)
    if format not in FORMAT_ALIASES:
        raise ValueError(f"unknown format={format!r}; choose one of {list(FORMAT_ALIASES)}")
    fmt, obj = (FORMAT_ALIASES[format], None) if FORMAT_ALIASES[format] else _sniff(path)
    if fmt == "mematte":
        return read_mematte_weights(path, _loaded=obj)
    if fmt == "hf":
        return read_hf_weights(path)
    if obj is None:
        obj = _read_file(path)
    return (read_official_weights if fmt == "official" else read_backbone_weights)(path, _loaded=obj)


def read_mematte_weights(path: str | Path, *, _loaded: Any = None) -> NetWeights:
    """A mematte training checkpoint: weights and the stored net config."""
    path = Path(path)
    ckpt = load_checkpoint(path) if _loaded is None else _loaded
    return NetWeights(
        state=net_state(ckpt),
        format="mematte",
        source=path,
        net_config=ckpt["mematte"].get("net_config"),
        step=ckpt.get("global_step"),
    )


# =========================================================================== official files
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


# =========================================================================== Hugging Face
# transformers' VitMatteForImageMatting (models/vitmatte/modeling_vitmatte.py,
# models/vitdet/modeling_vitdet.py) renames: embeddings.{position_embeddings,projection},
# encoder.layer.{i}, attention (for attn), fusion_blocks (for fusion_blks), batch_norm (for bn).
_HF_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^backbone\.embeddings\.position_embeddings$"), "backbone.pos_embed"),
    (re.compile(r"^backbone\.embeddings\.projection\."), "backbone.patch_embed.proj."),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\."), r"backbone.blocks.\1.attn."),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\."), r"backbone.blocks.\1."),
    (re.compile(r"^decoder\.fusion_blocks\."), "decoder.fusion_blks."),
    (re.compile(r"^(decoder\..*)\.batch_norm\."), r"\1.bn."),
)
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_to_ours(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a ``VitMatteForImageMatting`` state dict to our layout."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, repl in _HF_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _hf_folder_state(folder: Path) -> dict[str, Tensor]:
    """The weights of a ``save_pretrained`` folder (single file or sharded with an index)."""
    for name in _HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return _unwrap(_read_file(folder / name), folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(_unwrap(_read_file(folder / shard), folder / shard))
            return state
    raise FileNotFoundError(
        f"{folder} has no {' or '.join(_HF_WEIGHT_FILES)} (nor a sharded index); "
        "is it a save_pretrained folder?"
    )


def _require(cond: bool, folder: Path, what: str) -> None:
    if not cond:
        raise ValueError(f"{folder / 'config.json'}: {what} is not supported by our ViTMatte net")


def hf_net_config(
    config: Mapping[str, Any],
    preprocessor: Mapping[str, Any] | None = None,
    *,
    folder: Path = Path("."),
) -> dict[str, Any]:
    """Our resolved model config from a ``VitMatteConfig`` dict (and its image processor's).

    The normalisation comes from ``preprocessor_config.json`` when there is one, else
    :data:`HF_DEFAULT_MEAN`/``STD`` (what ``VitMatteImageProcessor`` uses by default; the original
    ViTMatte code uses ImageNet statistics instead).
    """
    _require(config.get("model_type") == "vitmatte", folder, f"model_type={config.get('model_type')!r}")
    bb = config.get("backbone_config") or {}
    _require(bb.get("model_type", "vitdet") == "vitdet", folder, f"backbone {bb.get('model_type')!r}")
    depth = int(bb.get("num_hidden_layers", 12))
    dim = int(bb.get("hidden_size", 768))
    # Our blocks fix these; the HF config may set them otherwise.
    checks = [
        (int(config.get("hidden_size", dim)) == dim, "a decoder width different from the backbone's"),
        (bb.get("hidden_act", "gelu") == "gelu", f"hidden_act={bb.get('hidden_act')!r}"),
        (math.isclose(float(bb.get("layer_norm_eps", 1e-6)), 1e-6), "layer_norm_eps other than 1e-6"),
        (math.isclose(float(config.get("batch_norm_eps", 1e-5)), 1e-5), "batch_norm_eps other than 1e-5"),
        (bool(bb.get("use_absolute_position_embeddings", True)), "no absolute position embedding"),
    ]
    out_features = bb.get("out_features")
    checks.append((not out_features or out_features[-1] == f"stage{depth}", f"out_features={out_features}"))
    for ok, what in checks:
        _require(ok, folder, what)

    def side(value: Any, name: str) -> int:
        if isinstance(value, (list, tuple)):
            _require(len(set(value)) == 1, folder, f"non-square {name}={value}")
            value = value[0]
        return int(value)

    patch = side(bb.get("patch_size", 16), "patch_size")
    windowed = [int(i) for i in bb.get("window_block_indices", [])]
    window = int(bb.get("window_size", 0))
    _require(not windowed or window > 0, folder, "window blocks with window_size=0")
    backbone = _backbone_config(
        in_chans=int(bb.get("num_channels", 4)),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=int(bb.get("num_attention_heads", 12)),
        mlp_ratio=float(bb.get("mlp_ratio", 4)),
        qkv_bias=bool(bb.get("qkv_bias", True)),
        window_size=window if windowed else 14,
        global_block_indexes=[i for i in range(depth) if i not in windowed],
        residual_block_indexes=[int(i) for i in bb.get("residual_block_indices", [])],
        use_rel_pos=bool(bb.get("use_relative_position_embeddings", False)),
        rel_pos_grid=side(bb.get("image_size", 224), "image_size") // patch,
        pretrain_img_size=side(bb.get("pretrain_image_size", 224), "pretrain_image_size"),
        pretrain_use_cls_token=True,  # VitDetEmbeddings always has the class slot
    )
    decoder = _decoder_config(
        dim,
        int(bb.get("num_channels", 4)),
        [int(c) for c in config.get("convstream_hidden_sizes", (48, 96, 192))],
        [int(c) for c in config.get("fusion_hidden_sizes", (256, 128, 64, 32))],
    )
    pre = preprocessor or {}
    mean, std = pre.get("image_mean", HF_DEFAULT_MEAN), pre.get("image_std", HF_DEFAULT_STD)
    size_divisor = int(pre.get("size_divisor", pre.get("size_divisibility", 32)))
    return _model_config(backbone, decoder, mean, std, size_divisor=size_divisor)


def read_hf_weights(path: str | Path) -> NetWeights:
    """A ``save_pretrained`` folder of ``VitMatteForImageMatting`` (or a weights file inside one).

    The normalisation of its image processor is written into ``pixel_mean``/``pixel_std`` so it
    travels with the weights (:func:`hf_net_config`). A weights file without ``config.json`` is
    read as a state dict and its architecture inferred from shapes.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        if path.is_dir():
            raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face save_pretrained folder")
        state = hf_to_ours(_normalise_keys(_unwrap(_read_file(path), path))[0])
        log.info("%s: no config.json beside it, architecture inferred, mean/std 0.5 (HF's default)", path)
        state["pixel_mean"] = torch.tensor(HF_DEFAULT_MEAN).view(1, 3, 1, 1)
        state["pixel_std"] = torch.tensor(HF_DEFAULT_STD).view(1, 3, 1, 1)
        return NetWeights(state=state, format="hf", source=path)
    raw = _hf_folder_state(folder) if path.is_dir() else _unwrap(_read_file(path), path)
    pre_file = folder / "preprocessor_config.json"
    preprocessor = json.loads(pre_file.read_text()) if pre_file.is_file() else None
    if preprocessor is None:
        log.info("%s: no preprocessor_config.json, using VitMatteImageProcessor's mean/std 0.5", folder)
    net_config = hf_net_config(json.loads(config_file.read_text()), preprocessor, folder=folder)
    state = hf_to_ours(raw)
    state["pixel_mean"] = torch.tensor(net_config["pixel_mean"], dtype=torch.float32).view(1, 3, 1, 1)
    state["pixel_std"] = torch.tensor(net_config["pixel_std"], dtype=torch.float32).view(1, 3, 1, 1)
    return NetWeights(state=state, format="hf", source=path, net_config=net_config)


# =========================================================================== ViT backbones
# timm / DINO (facebookresearch/dino) / MAE (facebookresearch/mae) ViTs share timm's names:
# cls_token, pos_embed (1, 1 + g², C), patch_embed.proj (C, 3, p, p), blocks.{i}.{norm1,
# attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head. Parts that have no place in the
# matting backbone are dropped: class/distillation/mask/register tokens, the final norm, heads,
# DINO's projection head and MAE's pixel decoder (decoder_*).
_BACKBONE_DROP = re.compile(
    r"^(cls_token|dist_token|mask_token|reg_token|register_tokens|norm\.|fc_norm\.|head\.|"
    r"head_dist\.|pre_logits\.|decoder_)"
)


def read_backbone_weights(path: str | Path, *, _loaded: Any = None) -> NetWeights:
    """A timm / DINO / MAE ViT state dict (optionally ``backbone.``-prefixed, as ViTMatte's
    ``pretrained/preprocess.py`` writes it) as backbone weights in our layout.

    The patch embedding and the position embedding are adapted to the target net when loaded
    (:func:`adapt_backbone_state`): only then are its input channels and grid known.
    """
    path = Path(path)
    raw, dropped = _normalise_keys(_unwrap(_read_file(path) if _loaded is None else _loaded, path))
    # ViTMatte's preprocessed DINO/MAE files prefix everything with backbone.
    raw = {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in raw.items()}
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if _BACKBONE_DROP.match(key):
            dropped.append(key)
        else:
            state[f"backbone.{key}"] = value
    if "backbone.patch_embed.proj.weight" not in state:
        raise ValueError(f"{path} has no patch_embed.proj.weight: not a ViT backbone state dict")
    return NetWeights(state=state, format="backbone", source=path, dropped=dropped)


def _split_pos_embed(num_tokens: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a position embedding with ``num_tokens`` entries."""
    for prefix in (0, 1, 2):
        side = math.isqrt(num_tokens - prefix)
        if side * side == num_tokens - prefix:
            return prefix, side
    raise ValueError(f"position embedding of {num_tokens} tokens is not a square grid plus class tokens")


def adapt_backbone_state(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fit pretrained ViT weights to our backbone's input and grid.

    - Patch embed (C, 3, p, p) → (C, 4, p, p): the trimap channel starts at zero, so the
      pretrained RGB response is unchanged at initialisation.
    - Pos embed: the file's class slot is kept where our net has one (unused by the forward
      pass; ViTMatte keeps it too), the grid is bicubic-resized to our pretrain grid.

    Args:
        state: backbone weights in our layout (:func:`read_backbone_weights`).
        own: the target net's ``state_dict()``.
    """
    from timm.layers import resample_abs_pos_embed

    out = dict(state)
    key = "backbone.patch_embed.proj.weight"
    if key in out and key in own:
        w, target = out[key], own[key]
        if w.shape[1] < target.shape[1] and w.shape[0] == target.shape[0] and w.shape[2:] == target.shape[2:]:
            pad = w.new_zeros(w.shape[0], target.shape[1] - w.shape[1], *w.shape[2:])
            out[key] = torch.cat([w, pad], dim=1)
    key = "backbone.pos_embed"
    same_width = key in out and key in own and out[key].shape[-1] == own[key].shape[-1]
    if same_width and out[key].shape != own[key].shape:
        pos = out[key]
        prefix, side = _split_pos_embed(pos.shape[1])
        own_prefix, own_side = _split_pos_embed(own[key].shape[1])
        grid = pos[:, prefix:]
        if side != own_side:
            grid = resample_abs_pos_embed(
                grid, new_size=[own_side, own_side], old_size=[side, side], num_prefix_tokens=0,
                interpolation="bicubic", antialias=False,
            )
        slots = pos[:, :own_prefix] if prefix >= own_prefix else torch.zeros_like(own[key][:, :own_prefix])
        out[key] = torch.cat([slots.to(grid.dtype), grid], dim=1)
    return out


# =========================================================================== net configs
def _backbone_config(**kwargs: Any) -> dict[str, Any]:
    """``conf/backbone/*.yaml`` with shape-given values filled in (others at their defaults)."""
    cfg: dict[str, Any] = {
        "_target_": "mematte.models.vit.ViT",
        "in_chans": 4,
        "patch_size": 16,
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        # stochastic depth is a training choice, not stored in weights
        "drop_path_rate": 0.0,
        "window_size": 14,
        "global_block_indexes": [2, 5, 8, 11],
        "residual_block_indexes": [2, 5, 8, 11],
        "use_rel_pos": True,
        "rel_pos_grid": 32,
        "pretrain_img_size": 224,
        "pretrain_use_cls_token": True,
        "attn_impl": "sdpa",
        "global_block": None,
    }
    cfg.update(kwargs)
    return cfg


def _decoder_config(
    in_chans: int, img_chans: int, convstream_out: list[int], fusion_out: list[int]
) -> dict[str, Any]:
    """``conf/decoder/detail_capture.yaml`` with the given widths."""
    return {
        "_target_": "mematte.models.decoder.DetailCapture",
        "in_chans": in_chans,
        "img_chans": img_chans,
        "convstream_out": list(convstream_out),
        "fusion_out": list(fusion_out),
    }


def _routed_block_config(ltrm: dict[str, Any]) -> dict[str, Any]:
    """``conf/router/local_global.yaml`` + ``conf/routing/batr.yaml`` (MEMatte's router)."""
    return {
        "_target_": "mematte.models.routed_block.RoutedBlock",
        "_partial_": True,
        "router": {"_target_": "mematte.models.router.LocalGlobalRouter", "_partial_": True},
        "ltrm": {"_target_": "mematte.models.ltrm.ConvTokenRefiner", "_partial_": True, **ltrm},
        "selection": "gumbel",
        "keep_ratio": 0.25,
        "max_tokens": None,
        "gumbel_tau": 1.0,
        "inference": "argmax",
        "masked_softmax": "official",
    }


def _model_config(
    backbone: dict[str, Any],
    decoder: dict[str, Any],
    pixel_mean: Iterable[float] = IMAGENET_MEAN,
    pixel_std: Iterable[float] = IMAGENET_STD,
    size_divisor: int = 32,
) -> dict[str, Any]:
    """``conf/model/vitmatte.yaml`` resolved around the given parts."""
    return {
        "_target_": "mematte.models.matting_net.MattingNet",
        "backbone": backbone,
        "decoder": decoder,
        "pixel_mean": [float(v) for v in pixel_mean],
        "pixel_std": [float(v) for v in pixel_std],
        "size_divisor": size_divisor,
    }


def _block_indexes(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    """Indexes of the backbone blocks with a key matching ``pattern`` after ``blocks.{i}.``."""
    rx = re.compile(rf"^backbone\.blocks\.(\d+)\.{pattern}")
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def _attention_layout(
    rel: Mapping[int, torch.Size], depth: int, routed: list[int], residual: list[int]
) -> tuple[list[int], int, int]:
    """(global block indexes, window size, global rel-pos grid) from the rel-pos table sizes.

    Routed blocks are the global ones (MEMatte). Otherwise window tables are the common size
    (27 for 14×14 windows) and global ones differ (63 for a 32×32 grid). Without tables the
    global blocks are taken where the conv residuals are (ViTMatte places them together).
    """
    default_global = residual or [i for i in (2, 5, 8, 11) if i < depth]
    if routed:
        window = [rel[i][0] for i in rel if i not in routed]
        return routed, (window[0] + 1) // 2 if window else 14, 32
    if not rel or len(rel) != depth:
        return default_global, 14, 32
    window_len = Counter(shape[0] for shape in rel.values()).most_common(1)[0][0]
    window_size = (window_len + 1) // 2
    global_blocks = [i for i in sorted(rel) if rel[i][0] != window_len]
    if not global_blocks:  # every table alike: the window covers the whole training grid
        return default_global, window_size, window_size
    return global_blocks, window_size, (rel[global_blocks[0]][0] + 1) // 2


def _ltrm_config(state: Mapping[str, Tensor], block: int, dim: int) -> dict[str, Any]:
    """``conf/ltrm/conv.yaml`` with the widths of block ``block``'s LTRM."""
    fc1 = state[f"backbone.blocks.{block}.ltrm.fc1.weight"]
    dw = state.get(f"backbone.blocks.{block}.ltrm.dwconv.weight")
    eca = state.get(f"backbone.blocks.{block}.ltrm.eca.conv.weight")
    return {
        "hidden_ratio": fc1.shape[0] / dim,
        "kernel_size": int(dw.shape[-1]) if dw is not None else 5,
        "dwconv": dw is not None,
        "eca": eca is not None,
        "eca_shortcut": True,  # the official LTRM's; not visible in the weights
        "eca_kernel": int(eca.shape[-1]) if eca is not None else 5,
    }


def _inferred_decoder(state: Mapping[str, Tensor], dim: int) -> dict[str, Any]:
    """The decoder widths in ``state``, or the paper's decoder for a backbone-only state."""
    def widths(pattern: str) -> list[int]:
        rx = re.compile(pattern)
        found = sorted((int(m.group(1)), v.shape[0]) for k, v in state.items() if (m := rx.match(k)))
        return [int(c) for _, c in found]

    convs = widths(r"^decoder\.convstream\.convs\.(\d+)\.conv\.weight$")
    fusions = widths(r"^decoder\.fusion_blks\.(\d+)\.conv\.conv\.weight$")
    if not (convs and fusions):
        return _decoder_config(dim, 4, [48, 96, 192], [256, 128, 64, 32])
    return _decoder_config(dim, int(state["decoder.convstream.convs.0.conv.weight"].shape[1]), convs, fusions)


def infer_net_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """A resolved model config for weights in our layout, read from the tensor shapes.

    Width, depth, MLP ratio, qkv bias, patch size, input channels, pretrain grid, window size,
    global / residual / routed block indexes, rel-pos use and grid, LTRM widths and decoder
    widths come from the weights. Heads come from the rel-pos tables (head_dim) and otherwise
    from the width as in ``conf/backbone`` (384 → 6, 768 → 12). A backbone-only state gets
    ``conf/backbone`` defaults for what it does not show (global and residual blocks 2, 5, 8,
    11, window 14, rel-pos) and the paper's decoder. Routed blocks get MEMatte's router
    (``router=local_global``), the only one official files hold. Settings that leave no trace
    in the weights (drop-path rate, attention kernel, routing rule) take the conf defaults.

    Raises:
        ValueError: the weights lack a patch embedding, or their routers cannot be read.
    """
    if "backbone.patch_embed.proj.weight" not in state:
        raise ValueError("cannot infer the net: no backbone.patch_embed.proj.weight in the weights")
    dim, in_chans, patch, _ = (int(n) for n in state["backbone.patch_embed.proj.weight"].shape)
    blocks = _block_indexes(state, "")
    depth = max(blocks) + 1 if blocks else 0
    routed, ltrm = _block_indexes(state, r"router\."), _block_indexes(state, r"ltrm\.")
    if routed != ltrm:
        raise ValueError(f"routers in blocks {routed} but LTRMs in blocks {ltrm}: pass the model config")
    if routed and f"backbone.blocks.{routed[0]}.router.in_conv.1.weight" not in state:
        raise ValueError(
            "cannot infer the router type from the weights (not MEMatte's in_conv/out_conv): "
            "pass the model config"
        )
    rel = {
        i: state[f"backbone.blocks.{i}.attn.rel_pos_h"].shape
        for i in blocks
        if f"backbone.blocks.{i}.attn.rel_pos_h" in state
    }
    residual = _block_indexes(state, r"residual\.conv1\.")
    full = any(k.startswith("decoder.") for k in state)
    global_blocks, window_size, rel_pos_grid = _attention_layout(rel, depth, routed, residual)
    num_heads = dim // next(iter(rel.values()))[1] if rel else _DEFAULT_HEADS.get(dim, max(1, dim // 64))
    pos = state.get("backbone.pos_embed")
    prefix, side = _split_pos_embed(pos.shape[1]) if pos is not None else (1, 14)
    fc1 = state.get("backbone.blocks.0.mlp.fc1.weight")
    backbone = _backbone_config(
        # a pretrained RGB backbone gets the trimap channel added when loaded
        in_chans=in_chans if full else 4,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=int(num_heads),
        mlp_ratio=float(fc1.shape[0] / dim) if fc1 is not None else 4.0,
        qkv_bias="backbone.blocks.0.attn.qkv.bias" in state,
        window_size=int(window_size),
        global_block_indexes=global_blocks,
        # a pretrained backbone has neither: ViTMatte adds them (conf/backbone defaults)
        residual_block_indexes=residual if full else [i for i in (2, 5, 8, 11) if i < depth],
        use_rel_pos=bool(rel) if full else True,
        rel_pos_grid=int(rel_pos_grid),
        pretrain_img_size=int(side * patch),
        pretrain_use_cls_token=prefix >= 1,
        global_block=_routed_block_config(_ltrm_config(state, routed[0], dim)) if routed else None,
    )
    mean = state["pixel_mean"].flatten().tolist() if "pixel_mean" in state else IMAGENET_MEAN
    std = state["pixel_std"].flatten().tolist() if "pixel_std" in state else IMAGENET_STD
    return _model_config(backbone, _inferred_decoder(state, dim), mean, std)


def resolve_net_config(
    weights: NetWeights, model_cfg: DictConfig | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model config to build for ``weights``: the given one, else stored, else inferred."""
    if model_cfg is not None:
        if isinstance(model_cfg, DictConfig):
            return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
        return dict(model_cfg)
    if weights.net_config is not None:
        return dict(weights.net_config)
    config = infer_net_config(weights.state)
    log.info(
        "%s: inferred %s (C=%d, depth=%d, heads=%d, global blocks %s)",
        weights.source,
        "MEMatte" if config["backbone"]["global_block"] else "ViTMatte",
        config["backbone"]["embed_dim"], config["backbone"]["depth"],
        config["backbone"]["num_heads"], config["backbone"]["global_block_indexes"],
    )
    return config


# =========================================================================== loading
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

    Raises:
        WeightsMismatchError: the weights do not fit (every offending key listed).
    """
    weights = read_weights(path, format)
    if net is None:
        net = build_net(resolve_net_config(weights, config))
    apply_weights(net, weights, partial=(not weights.full) if partial is None else partial)
    return net


def net_from_any(path: str | Path, model_cfg: DictConfig | Mapping[str, Any] | None = None) -> nn.Module:
    """A ready net from any full-net file (for ``eval.py`` / ``predict.py`` ``ckpt_path=``).

    Mematte checkpoints rebuild from their stored config, HF folders from ``config.json``,
    official files from ``model_cfg`` or, without one, from their shapes.
    """
    return net_from_weights(read_weights(path), model_cfg)


def net_from_weights(
    weights: NetWeights, model_cfg: DictConfig | Mapping[str, Any] | None = None
) -> nn.Module:
    """Build the net :class:`NetWeights` describe and load them (see :func:`net_from_any`)."""
    if not weights.full:
        raise WeightsMismatchError(
            f"{weights.source} ({weights.description}) holds no decoder: it can only initialise a net "
            "(init_from=PATH when training), not be evaluated"
        )
    net = build_net(resolve_net_config(weights, model_cfg))
    apply_weights(net, weights, partial=False)
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


# =========================================================================== export
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


__all__ = [
    "FORMATS",
    "FORMAT_ALIASES",
    "NetWeights",
    "WeightsMismatchError",
    "adapt_backbone_state",
    "apply_weights",
    "build_net",
    "classify_state",
    "detect_format",
    "export_official",
    "hf_net_config",
    "hf_to_ours",
    "infer_net_config",
    "init_net_from",
    "load_checkpoint",
    "load_net_weights",
    "load_teacher",
    "net_from_any",
    "net_from_checkpoint",
    "net_state",
    "official_to_ours",
    "ours_to_official",
    "read_backbone_weights",
    "read_hf_weights",
    "read_mematte_weights",
    "read_official_weights",
    "read_weights",
    "resolve_net_config",
    "save_net_checkpoint",
]
