"""Hugging Face transformers' ``VitMatteForImageMatting``: ``save_pretrained`` folders (local, or
by hub id from the local HF cache) read into our layout with the image processor's
normalisation carried into the net, and ViTMatte nets exported as such folders."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mematte.checkpoints.common import (
    HF_DEFAULT_MEAN,
    HF_DEFAULT_STD,
    NetWeights,
    _normalise_keys,
    _read_file,
    _unwrap,
)
from mematte.checkpoints.netconfig import _backbone_config, _decoder_config, _model_config

log = logging.getLogger("mematte")


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


# =========================================================================== hub ids
# owner/name, optionally @revision (a branch, tag or commit), as the hub spells repo ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a VitMatte repo needs; the hub's other files (README, .gitattributes…) are not fetched.
_HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*.bin",
]


# A missing local file (``checkpoints/last.ckpt``) must not be mistaken for a hub id.
_WEIGHT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors", ".pkl", ".pickle")


def is_hub_id(source: str | Path) -> bool:
    """True when ``source`` names no local file or folder but reads as ``owner/name[@rev]``
    (and not as a weights file name)."""
    text = str(source)
    return (
        not Path(source).exists()
        and bool(_HUB_ID.match(text))
        and not text.partition("@")[0].lower().endswith(_WEIGHT_SUFFIXES)
    )


def resolve_source(source: str | Path) -> Path:
    """A local path for a weights file, a folder or a Hugging Face hub id.

    A hub id (``hustvl/vitmatte-small-composition-1k``, optionally ``@revision``) is looked up
    in the local Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``) through ``huggingface_hub``;
    when it is not cached and the hub is reachable (``HF_HUB_OFFLINE`` unset) it is downloaded.

    Raises:
        FileNotFoundError: not cached and offline (or the download failed): the message says
            how to download it.
    """
    if not is_hub_id(source):
        return Path(source)
    repo_id, _, revision = str(source).partition("@")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as err:
        raise ImportError(
            f"{source} is not a local path; reading it as a Hugging Face hub id needs huggingface_hub "
            "(pip install 'mematte[interop]')"
        ) from err
    how = (
        f"download it once with `huggingface-cli download {repo_id}` (or `hf download {repo_id}`) "
        f"where the hub is reachable, into the cache at {constants.HF_HUB_CACHE} (set HF_HOME or "
        "HF_HUB_CACHE to use another), or pass a local save_pretrained folder"
    )
    kwargs = {"revision": revision or None, "allow_patterns": _HUB_PATTERNS}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception as cached_err:  # not in the cache (LocalEntryNotFoundError and kin)
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{source}: no such file or folder, and the Hugging Face hub id is not in the local "
                f"cache (HF_HUB_OFFLINE is set, so nothing is downloaded): {how}"
            ) from cached_err
    try:
        log.info("%s: not in the Hugging Face cache, downloading", source)
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as err:
        raise FileNotFoundError(
            f"{source}: no such file or folder, not in the local Hugging Face cache, and the download "
            f"failed ({type(err).__name__}: {err}): {how}"
        ) from err


# =========================================================================== export
_OURS_TO_HF: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^backbone\.pos_embed$"), "backbone.embeddings.position_embeddings"),
    (re.compile(r"^backbone\.patch_embed\.proj\."), "backbone.embeddings.projection."),
    (re.compile(r"^backbone\.blocks\.(\d+)\.attn\."), r"backbone.encoder.layer.\1.attention."),
    (re.compile(r"^backbone\.blocks\.(\d+)\."), r"backbone.encoder.layer.\1."),
    (re.compile(r"^decoder\.fusion_blks\."), "decoder.fusion_blocks."),
    (re.compile(r"^(decoder\..*)\.bn\."), r"\1.batch_norm."),
)
# Settings that leave the forward pass (eval mode) unchanged, and so need no HF counterpart.
_NOT_EXPORTED = ("drop_path_rate", "attn_impl", "global_block", "pretrain_use_cls_token")


def ours_to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename our state dict to ``VitMatteForImageMatting``'s (inverse of :func:`hf_to_ours`);
    the normalisation goes to ``preprocessor_config.json`` instead."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        for pattern, repl in _OURS_TO_HF:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def hf_config_dicts(net_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``VitMatteConfig`` kwargs with a ``VitDetConfig`` dict, ``VitMatteImageProcessor``
    kwargs) describing our resolved model config; inverse of :func:`hf_net_config`."""
    bb, dec = net_config["backbone"], net_config["decoder"]
    depth = int(bb["depth"])
    backbone = {
        "hidden_size": int(bb["embed_dim"]),
        "num_hidden_layers": depth,
        "num_attention_heads": int(bb["num_heads"]),
        # VitDetConfig takes an integer ratio; a fractional one is refused by _exportable
        "mlp_ratio": int(bb["mlp_ratio"]) if float(bb["mlp_ratio"]).is_integer() else float(bb["mlp_ratio"]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "num_channels": int(bb["in_chans"]),
        "patch_size": int(bb["patch_size"]),
        "image_size": int(bb["rel_pos_grid"]) * int(bb["patch_size"]),
        "pretrain_image_size": int(bb["pretrain_img_size"]),
        "qkv_bias": bool(bb["qkv_bias"]),
        "drop_path_rate": 0.0,
        "window_size": int(bb["window_size"]),
        "window_block_indices": [i for i in range(depth) if i not in set(bb["global_block_indexes"])],
        "residual_block_indices": [int(i) for i in bb["residual_block_indexes"]],
        "use_absolute_position_embeddings": True,
        "use_relative_position_embeddings": bool(bb["use_rel_pos"]),
        "out_features": [f"stage{depth}"],
    }
    config = {
        "backbone_config": backbone,
        "hidden_size": int(dec["in_chans"]),
        "batch_norm_eps": 1e-5,
        "convstream_hidden_sizes": [int(c) for c in dec["convstream_out"]],
        "fusion_hidden_sizes": [int(c) for c in dec["fusion_out"]],
    }
    processor = {
        "image_mean": [float(v) for v in net_config["pixel_mean"]],
        "image_std": [float(v) for v in net_config["pixel_std"]],
        "size_divisor": int(net_config.get("size_divisor", 32)),
    }
    return config, processor


def _exportable(net_config: Mapping[str, Any], back: Mapping[str, Any]) -> list[str]:
    """Where our config and the one transformers would rebuild from the export differ."""
    problems = []
    if not float(net_config["backbone"]["mlp_ratio"]).is_integer():
        problems.append(f"backbone.mlp_ratio: ours {net_config['backbone']['mlp_ratio']!r}, VitDetConfig takes integers only")
    for part in ("backbone", "decoder"):
        for key, ours in net_config[part].items():
            if part == "backbone" and key in _NOT_EXPORTED:
                continue
            if back[part].get(key) != ours:
                problems.append(f"{part}.{key}: ours {ours!r}, transformers' VitMatte {back[part].get(key)!r}")
    for key in ("pixel_mean", "pixel_std", "size_divisor"):
        if key in net_config and back.get(key) != net_config[key]:
            problems.append(f"{key}: ours {net_config[key]!r}, exported {back.get(key)!r}")
    return problems


def export_hf(
    net: nn.Module, folder: str | Path, net_config: Mapping[str, Any] | None = None
) -> Path:
    """Write a ViTMatte net as a ``VitMatteForImageMatting`` ``save_pretrained`` folder:
    ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``.

    The normalisation goes into the image processor's ``image_mean``/``image_std``: weights that
    came from an official file keep the ImageNet statistics they were trained with (the
    processor's default, 0.5, would shift every input).

    Args:
        net: a ViTMatte :class:`~mematte.models.matting_net.MattingNet` (no routers).
        folder: output folder (created; existing files of the same names are replaced).
        net_config: its resolved model config; default: inferred from the weights.

    Raises:
        ValueError: a routed (MEMatte) net, which transformers has no class for, or settings
            transformers' VitMatte cannot express (each listed).
        ImportError: transformers or safetensors are missing.
    """
    from mematte.checkpoints.netconfig import infer_net_config

    routed = getattr(net.backbone, "routed_block_indexes", ())
    if routed:
        raise ValueError(
            f"the net routes blocks {list(routed)} (MEMatte): transformers has no MEMatte class, so it "
            "cannot be exported to Hugging Face. Export it to the official layout instead "
            "(--to-format official) or keep the mematte checkpoint"
        )
    try:
        import transformers
        from safetensors.torch import save_file
    except ImportError as err:
        raise ImportError("exporting to Hugging Face needs transformers and safetensors: pip install 'mematte[interop]'") from err
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    net_config = dict(net_config) if net_config is not None else infer_net_config(state)
    config_kwargs, processor_kwargs = hf_config_dicts(net_config)
    problems = _exportable(net_config, hf_net_config({"model_type": "vitmatte", **config_kwargs}, processor_kwargs))
    if problems:
        raise ValueError(
            "the net has settings transformers' VitMatte cannot express:\n  " + "\n  ".join(problems)
        )
    hf_state = ours_to_hf(state)
    key = "backbone.embeddings.position_embeddings"
    if not net_config["backbone"].get("pretrain_use_cls_token", True):
        # VitDetEmbeddings always reserves (and skips) a class slot
        hf_state[key] = torch.cat([hf_state[key].new_zeros(1, 1, hf_state[key].shape[-1]), hf_state[key]], 1)
    backbone = transformers.VitDetConfig(**config_kwargs.pop("backbone_config"))
    config = transformers.VitMatteConfig(backbone_config=backbone, **config_kwargs)
    config.architectures = ["VitMatteForImageMatting"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    transformers.VitMatteImageProcessor(**processor_kwargs).save_pretrained(folder)
    save_file(hf_state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
