"""Pretrained ViT backbones (timm / DINO / MAE state dicts) as initialisation of our backbone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mematte.checkpoints.common import NetWeights, _normalise_keys, _read_file, _split_pos_embed, _unwrap


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
