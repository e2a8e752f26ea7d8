"""Inference presets: how an input is encoded for the net and how its alpha is finished.

Two presets exist:

``default``
    Ours. The trimap is quantised to {0, 0.5, 1} (the values training uses), each side is padded
    to its next multiple of the net's ``size_divisor``, routed blocks have no token cap, the
    alpha is clamped to the trimap's known regions, and 8-bit output rounds to nearest.

``official``
    What the released ViTMatte / MEMatte inference scripts do, so that numbers reproduce the
    published ones:

    - the trimap PNG goes through ``torchvision``'s ``to_tensor``: value / 255 unquantised, so
      128 → 0.50196 (and any other value passes as it is);
    - padding: when either side is not a multiple of 32, *both* sides get ``32 − side % 32``
      rows / columns, so an already aligned side grows by a full 32 (a 1920×1080 image is
      padded to 1952×1088, one more token row);
    - MEMatte caps each routed block at 18,500 global-attention tokens (``max_number_token``),
      keeping the highest-scoring ones; ViTMatte has no routed blocks;
    - MEMatte clamps the known regions (alpha 0 where the trimap is 0, 1 where it is 255);
      ViTMatte's script does not clamp;
    - the alpha is saved with ``to_pil_image``, which truncates: ``⌊α · 255⌋``;
    - the decoder's and the conv residuals' convolutions are direct ones, as in the official
      code (no Winograd convolutions on a CPU, :mod:`mematte.models.winograd`), so the
      arithmetic is the same.

    Not reproduced: the official MEMatte decoder runs in 512² patches zero-padded at their
    borders, which is inexact along every patch border; ours decodes exactly (tiles with
    enough context, :func:`mematte.inference.decode_tiled`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mematte.data.composition import quantise_trimap
from mematte.models.matting_net import clamp_to_trimap

__all__ = [
    "OFFICIAL_MAX_TOKENS",
    "PRESETS",
    "InferenceRules",
    "encode_trimap",
    "finish_alpha",
    "inference_rules",
]

PRESETS: tuple[str, ...] = ("default", "official")
# The official MEMatte inference script's max_number_token (tokens per routed block and image).
OFFICIAL_MAX_TOKENS = 18_500

TrimapEncoding = Literal["quantise", "scale"]
Padding = Literal["aligned", "official"]
AlphaRounding = Literal["round", "truncate"]


@dataclass(frozen=True)
class InferenceRules:
    """The rules one preset applies (see the module docstring).

    Attributes:
        preset: the preset's name.
        trimap_encoding: ``quantise`` ({0, 0.5, 1}) or ``scale`` (value / 255, as ``to_tensor``).
        padding: ``aligned`` (each side to its next multiple) or ``official`` (both sides grow
            when either is unaligned; :func:`mematte.models.matting_net.padded_size`).
        max_tokens: cap on global-attention tokens per routed block and image (None = none).
        clamp: force the trimap's known regions to 0 / 1.
        alpha_rounding: how the alpha becomes 8 bit: ``round`` to nearest or ``truncate``
            (``⌊α · 255⌋``, what ``to_pil_image`` does).
        winograd: let fp32 CPU inference run the decoder's wide convs and the backbone's
            conv residuals as Winograd convolutions (equal to direct ones up to fp32 rounding).
    """

    preset: str = "default"
    trimap_encoding: TrimapEncoding = "quantise"
    padding: Padding = "aligned"
    max_tokens: int | None = None
    clamp: bool = True
    alpha_rounding: AlphaRounding = "round"
    winograd: bool = True


def inference_rules(preset: str, routed: bool) -> InferenceRules:
    """The rules of ``preset`` for a net that is routed (MEMatte) or not (ViTMatte).

    Raises:
        ValueError: an unknown preset.
    """
    if preset == "default":
        return InferenceRules()
    if preset == "official":
        return InferenceRules(
            preset="official",
            trimap_encoding="scale",
            padding="official",
            max_tokens=OFFICIAL_MAX_TOKENS if routed else None,
            clamp=routed,  # MEMatte's script clamps, ViTMatte's does not
            alpha_rounding="truncate",
            winograd=False,
        )
    raise ValueError(f"preset={preset!r}: choose one of {list(PRESETS)}")


def _to_uint8_levels(trimap: Tensor) -> Tensor:
    """A trimap as float32 8-bit levels 0..255: uint8 as it is, float in [0, 1] scaled and
    rounded half up (0.5 → 128, as the metrics read a quantised trimap)."""
    if trimap.dtype == torch.uint8:
        return trimap.float()
    if not trimap.is_floating_point():
        raise TypeError(f"trimap dtype {trimap.dtype} unsupported: pass uint8 0..255 or float in [0, 1]")
    t = trimap.float()
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError("a float trimap must lie in [0, 1] (or pass uint8 0..255)")
    return torch.floor(t * 255.0 + 0.5)


def encode_trimap(trimap: Tensor, encoding: TrimapEncoding) -> Tensor:
    """The trimap channel the net reads.

    Args:
        trimap: any shape, uint8 0..255 or float in [0, 1].
        encoding: ``quantise`` → {0, 0.5, 1}; ``scale`` → 8-bit level / 255 (128 → 0.50196).

    Returns:
        float32, same shape.
    """
    if encoding == "quantise":
        return quantise_trimap(trimap).float()
    if encoding == "scale":
        return _to_uint8_levels(trimap) / 255.0
    raise ValueError(f"trimap encoding {encoding!r}: choose quantise or scale")


def finish_alpha(alpha: Tensor, trimap: Tensor, rules: InferenceRules) -> Tensor:
    """Clamp to the known regions (if the rules do) and apply the 8-bit rounding rule.

    Args:
        alpha: (B, 1, H, W) float in [0, 1], cropped to the image.
        trimap: (B, 1, H, W) the encoded trimap (:func:`encode_trimap`): 0 and 1 are known.
        rules: the preset's rules.

    Returns:
        (B, 1, H, W) float32. With ``truncate`` the values are 8-bit levels ``⌊α · 255⌋ / 255``,
        so any later rounding to 8 bit keeps them.
    """
    alpha = alpha.float()
    if rules.clamp:
        alpha = clamp_to_trimap(alpha, trimap)
    if rules.alpha_rounding == "truncate":
        # to_pil_image: pic.mul(255).byte() in float32 — truncation toward zero
        alpha = torch.floor((alpha * 255.0).clamp(0.0, 255.0)) / 255.0
    return alpha
