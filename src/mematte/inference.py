"""High-resolution inference helpers: tiled evaluation of the detail-capture decoder.

At 4K–8K the decoder's full-resolution tensors (the upsampled fusion input, the concat, the
fusion output and its BatchNorm copy, each with 32–64+ channels) reach several GB.
:func:`decode_tiled` evaluates the decoder on overlapping windows instead, so the peak memory is
bounded by the window size, and the result is exactly the untiled one (to fp32 rounding) as
long as the context covers the decoder's receptive-field radius (:func:`decoder_context_radius`,
31 px for the standard 4-level decoder; the 64 px default is twice that).

Why the radius is finite and small (standard decoder, features at 1/16, count in pixels of each
level, "E" = how many pixels next to a window border differ from the untiled computation):

* ConvStream (stride-2 3×3 convs, padding 1): output ``i`` reads inputs ``2i-1 .. 2i+1``. With
  window origins at multiples of 16 only the first pixel of each level D1..D3 reads the zero
  padding (E=1 on the top/left side, E=0 on the bottom/right side); D0 is the raw input (E=0).
* Bilinear ×2 with ``align_corners=False``: output ``i`` reads source ``floor(i/2 - 1/4)`` and
  the next one; the border pixel is clamped instead of reading its real neighbour, so
  E → 2E + 1 on both sides.
* Each 3×3 stride-1 conv (fusion convs, matting head's first conv) adds 1; the 1×1 conv and
  sigmoid add nothing.

Features (1/16) E=0 → up 1 → conv 2 (1/8) → up 5 → conv 6 (1/4) → up 13 → conv 14 (1/2) →
up 29 → conv 30 (1/1) → head 31. So 31 px on every side; since window extents are multiples of
16, the smallest exact context is 32 px, and 16 px is measurably not enough.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mematte.models.decoder import DetailCapture

__all__ = ["decode_tiled", "decoder_context_radius", "decoder_stride", "decoder_tile_peak_bytes"]


def decoder_stride(decoder: DetailCapture) -> int:
    """Downsampling factor of the decoder's feature input (16 for the standard 4-level decoder)."""
    return 2 ** len(decoder.fusion_blks)


def decoder_context_radius(decoder: DetailCapture) -> int:
    """Receptive-field radius, in full-resolution pixels, of the decoder's dependence on the
    pixels outside a window (see the module docstring for the derivation).

    For each fusion level: bilinear ×2 (``align_corners=False``) maps an error band of width E to
    2E + 1, the 3×3 conv adds 1 (the conv-stream detail level is wrong only in its first pixel,
    which is inside that band). The matting head's 3×3 conv adds 1 more. 31 px for 4 levels.

    Args:
        decoder: the detail-capture decoder.

    Returns:
        Radius in pixels; any context ≥ this (rounded up to the stride) gives exact tiling.
    """
    radius = 0
    for _ in decoder.fusion_blks:
        radius = 2 * radius + 1  # bilinear ×2 upsample clamps at the window border
        radius += 1  # 3×3 conv (padding 1) of the fusion block
    return radius + 1  # 3×3 conv of the matting head


def _check_multiple(name: str, value: int, stride: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % stride:
        raise ValueError(
            f"{name}={value!r} must be a positive multiple of {stride} (the decoder stride) so that "
            f"the feature crop at 1/{stride} and all strided levels align exactly; "
            f"round {name} up to a multiple of {stride}"
        )


@torch.no_grad()
def decode_tiled(
    decoder: DetailCapture,
    features: Tensor,
    images: Tensor,
    tile: int = 512,
    context: int = 64,
) -> Tensor:
    """Evaluate ``decoder(features, images)`` tile by tile with overlapping context.

    The output is split into ``tile`` × ``tile`` tiles (the last row/column smaller). Each tile is
    computed from an input window extended by ``context`` pixels on every side (clipped at the
    image border), and the window's centre is written into a preallocated output. Window origins
    and extents are multiples of the decoder stride (16), so the feature crop (1/16) and the
    conv-stream levels (1/2, 1/4, 1/8) line up exactly with the untiled computation.

    Exactness: the decoder's receptive-field radius is 31 px (:func:`decoder_context_radius`;
    bilinear ×2 with ``align_corners=False`` and zero-padded convs at window borders spread a
    border error 1 → 2 → 5 → 6 → 13 → 14 → 29 → 30 → 31 px). Any ``context`` ≥ 32 (the next
    multiple of 16) gives the untiled result up to fp32 rounding (measured: context=32 exact,
    context=16 not); the default 64 px has a 2× margin. BatchNorm must be in eval mode
    (running statistics): in training mode it would normalise with per-tile statistics.

    Memory: at any time only one window's activations are alive (estimate with
    :func:`decoder_tile_peak_bytes`) plus the (B, 1, H, W) output. Gradients are not tracked.

    Args:
        decoder: the detail-capture decoder, in eval mode.
        features: (B, C, H/16, W/16) backbone features.
        images: (B, 4, H, W) normalised decoder input (already padded; H, W multiples of 16).
        tile: output tile side in pixels, a positive multiple of 16.
        context: extra input pixels on every side of a tile, a positive multiple of 16.

    Returns:
        alpha: (B, 1, H, W) in [0, 1], same dtype/device as the decoder output.
    """
    stride = decoder_stride(decoder)
    _check_multiple("tile", tile, stride)
    _check_multiple("context", context, stride)
    if decoder.training:
        raise ValueError(
            "decoder is in training mode: BatchNorm would use per-tile batch statistics; "
            "call decoder.eval() before decode_tiled"
        )
    if images.ndim != 4 or features.ndim != 4:
        raise ValueError(
            f"expected 4-D features and images, got {tuple(features.shape)} and {tuple(images.shape)}"
        )
    b, _, h, w = images.shape
    if h % stride or w % stride:
        raise ValueError(f"images size {(h, w)} must be a multiple of {stride}; pad the input first")
    if features.shape[0] != b or tuple(features.shape[-2:]) != (h // stride, w // stride):
        raise ValueError(
            f"features {tuple(features.shape)} do not match images {tuple(images.shape)}: "
            f"expected (B={b}, C, {h // stride}, {w // stride})"
        )

    if h <= tile and w <= tile:
        return decoder(features, images)

    out: Tensor | None = None
    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        wy0, wy1 = max(y0 - context, 0), min(y1 + context, h)
        for x0 in range(0, w, tile):
            x1 = min(x0 + tile, w)
            wx0, wx1 = max(x0 - context, 0), min(x1 + context, w)
            alpha = decoder(
                features[:, :, wy0 // stride : wy1 // stride, wx0 // stride : wx1 // stride],
                images[:, :, wy0:wy1, wx0:wx1],
            )
            if out is None:
                out = alpha.new_empty((b, alpha.shape[1], h, w))
            out[:, :, y0:y1, x0:x1] = alpha[:, :, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
            del alpha
    assert out is not None
    return out


def decoder_tile_peak_bytes(
    decoder: DetailCapture,
    tile: int,
    context: int,
    feature_chans: int,
    dtype_bytes: int = 4,
) -> int:
    """Estimate the peak activation memory of decoding one tile, per batch element.

    An estimate (for a later memory-budget check), not a measurement: the window is taken
    unclipped, side ``S = tile + 2 * context``, and the peak is the largest sum of tensors that
    are alive together during one fusion block or the matting head:

    * the conv-stream levels D0..D3 (kept alive for the whole decoder),
    * the feature crop (S/16)²·C (D0 and the feature crop are views of the caller's tensors,
      counted anyway: convs may copy a non-contiguous view),
    * inside fusion block ``i``: its input, the ×2 upsampled input, the concat with the detail
      level, and the conv output plus its BatchNorm output (ReLU is in place),
    * inside the head: the last fusion output, the 3×3 conv and BatchNorm outputs, the logit
      and the sigmoid.

    The last fusion block (at full window resolution) dominates. Backend workspaces (cuDNN,
    im2col) and allocator rounding are not counted; the (B, 1, H, W) output of
    :func:`decode_tiled` is not included either.

    Args:
        decoder: the detail-capture decoder (widths are read from it).
        tile: output tile side in pixels.
        context: context pixels on every side.
        feature_chans: backbone feature channels C.
        dtype_bytes: bytes per element (4 for fp32, 2 for fp16/bf16).

    Returns:
        Estimated peak bytes for one batch element (multiply by B).
    """
    side = tile + 2 * context
    stride = decoder_stride(decoder)
    conv_chans = decoder.convstream.conv_chans  # [4, c1, c2, c3]
    levels = [conv_chans[k] * (side // 2**k) ** 2 for k in range(len(conv_chans))]
    details = sum(levels)
    feats = feature_chans * (side // stride) ** 2

    peak = 0
    x_chans, x_side = feature_chans, side // stride
    n = len(decoder.fusion_blks)
    for i, blk in enumerate(decoder.fusion_blks):
        out_side = x_side * 2
        detail_chans = conv_chans[n - i - 1]
        out_chans = blk.conv.conv.out_channels
        x_in = x_chans * x_side**2
        up = x_chans * out_side**2
        cat = (x_chans + detail_chans) * out_side**2
        conv_bn = 2 * out_chans * out_side**2
        peak = max(peak, feats + details + x_in + up + cat + conv_bn)
        x_chans, x_side = out_chans, out_side

    mid_chans = decoder.matting_head.matting_convs[0].out_channels
    head = x_chans * x_side**2 + 2 * mid_chans * x_side**2 + 2 * x_side**2
    peak = max(peak, feats + details + head)
    return int(peak * dtype_bytes)
