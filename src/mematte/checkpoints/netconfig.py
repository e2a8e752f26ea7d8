"""Model configs (``_target_`` trees, as in ``conf/``) for weights that carry none: built from
the tensor shapes of a state dict in our layout (:func:`infer_net_config`)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mematte.checkpoints.common import IMAGENET_MEAN, IMAGENET_STD, NetWeights, _split_pos_embed

log = logging.getLogger("mematte")

# conf/backbone/*.yaml: heads per width (a backbone without rel-pos tables does not show them).
_DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}


def build_net(model_cfg: DictConfig | dict, *, init_weights: bool = True) -> nn.Module:
    """Instantiate the matting net from its (possibly resolved) config.

    ``init_weights=False`` skips the random initialisation of every parameter
    (:func:`skipped_weight_init`): for a net whose weights are all loaded next, where drawing
    them first costs about 0.35 s of a ViT-S start-up (of about 0.4 s to build it). The
    parameters then hold whatever memory they were given until they are loaded.
    """
    if init_weights:
        return instantiate(model_cfg, _convert_="partial")
    with skipped_weight_init():
        return instantiate(model_cfg, _convert_="partial")


# torch.nn.init's in-place initialisers (what layer constructors and our _init_weights call)
_INITIALISERS = tuple(
    name for name in dir(nn.init) if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name))
)


def _leave_as_is(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return tensor


@contextlib.contextmanager
def skipped_weight_init() -> Iterator[None]:
    """Within the block, ``torch.nn.init``'s in-place initialisers (``uniform_``,
    ``kaiming_uniform_``, ``trunc_normal_``, ``zeros_``…) leave their tensor as it is.

    Layers built here keep the uninitialised memory of ``torch.empty``; values a constructor
    sets directly (``torch.zeros`` tables, buffers such as the pixel statistics) are kept.
    Only for nets whose parameters are all overwritten right after (``net_from_weights``
    checks that every one was loaded). The initialisers are module attributes, so this is
    process-wide while the block runs: do not build other nets in other threads meanwhile.
    """
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    try:
        for name in saved:
            setattr(nn.init, name, _leave_as_is)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


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
