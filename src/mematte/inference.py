"""High-resolution inference: tiled decoding, a peak-memory estimate, and the :class:`Predictor`.

At 4K–8K the decoder's full-resolution tensors (the upsampled fusion input, the concat, the
fusion output and its BatchNorm copy, each with 32–64+ channels) reach several GB.
:func:`decode_tiled` evaluates the decoder on overlapping windows instead, so the peak memory is
bounded by the window size, and the result is exactly the untiled one (to fp32 rounding) as
long as the context covers the decoder's receptive-field radius (:func:`decoder_context_radius`,
31 px for the standard 4-level decoder; the 32 px default is that rounded up to the stride).

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

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from mematte.models.decoder import BAND_HALO, DetailCapture, band_rows
from mematte.models.matting_net import LazyInput, MattingNet, as_tensor, crop_input, padded_size
from mematte.models.routed_block import INFERENCE_RULES, RoutedBlock
from mematte.models.vit import ResBottleneck, RoutingInfo, ViT
from mematte.models.winograd import runs_on as winograd_runs_on, scratch_elements
from mematte.presets import encode_trimap, finish_alpha, inference_rules
from mematte.profiling import BOUNDED_MMAP_BYTES, release_free_memory, tune_heap

if TYPE_CHECKING:  # pragma: no cover
    from mematte.precision import GuardResult

log = logging.getLogger("mematte")

__all__ = [
    "AUTO_TILES",
    "MemoryBudgetError",
    "Prediction",
    "Predictor",
    "auto_tile",
    "configure_routed_inference",
    "decode_tiled",
    "decoder_context_radius",
    "decoder_stride",
    "decoder_tile_peak_bytes",
    "estimate_peak_bytes",
    "releases_freed_memory",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
GIB = 1024**3
_MARGIN_FRACTION = 0.2
_MARGIN_BYTES = 64 * 1024**2
# the fixed part where freed memory is handed back between stages (releases_freed_memory): no
# heap retained from an earlier stage (measured, lean models at 1024²: 29–46 MiB above the
# modelled tensors, where 64 MiB made the estimate 24–36 % high). 8 MiB since the backbone's
# bands are 1,024 tokens (INFERENCE_CHUNK_TOKENS): over ten fresh-process peaks of the lean
# ViTMatte-S and MEMatte-S at 1024²–6016×4872, measured / modelled activations was
# 1.09–1.39, and 8 MiB centres the estimate in that range (on those peaks, worst +12.6 % /
# −10.6 %, against +15.5 % / −7.7 % with 16 MiB)
_RELEASED_MARGIN_BYTES = 8 * 1024**2
# CPU inference (Predictor.release_between_stages), by the size of one token map (B·N·C
# activations): below this, glibc reuses freed buffers between the release points
# (profiling.tune_heap(reuse=True)); from this size on (about 3,300² for ViT-S), large buffers
# are unmapped when freed and freed heap goes back to the OS after every backbone block too.
# Measured, MEMatte-S, one core, first call: at 2048² (24 MiB maps) 23.4 s and 250 MiB with
# reuse, 26.0–26.5 s and 263–269 MiB releasing after every block; at 3072² 60.4 s / 466 MiB
# against 62.9 s / 476 MiB; at 4096² (96 MiB maps) reuse grew the peak to 1,153 MiB, against
# 567 MiB with release.
BLOCK_RELEASE_MIN_TOKEN_MAP_BYTES = 64 * 1024**2


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


def _check_multiple(name: str, value: int, stride: int, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1) or value % stride:
        raise ValueError(
            f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} multiple of "
            f"{stride} (the decoder stride) so that "
            f"the feature crop at 1/{stride} and all strided levels align exactly; "
            f"round {name} up to a multiple of {stride}"
        )


@torch.no_grad()
def decode_tiled(
    decoder: DetailCapture,
    features: Tensor,
    images: Tensor | LazyInput,
    tile: int = 512,
    context: int = 32,
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
    context=16 not), so the default is 32 px. BatchNorm must be in eval mode
    (running statistics): in training mode it would normalise with per-tile statistics.

    Memory: at any time only one window's activations are alive (estimate with
    :func:`decoder_tile_peak_bytes`) plus the (B, 1, H, W) output. Gradients are not tracked.

    Args:
        decoder: the detail-capture decoder, in eval mode.
        features: (B, C, H/16, W/16) backbone features.
        images: (B, 4, H, W) normalised decoder input (already padded; H, W multiples of 16),
            or a :class:`~mematte.models.matting_net.LazyInput` that computes each window.
        tile: output tile side in pixels, a positive multiple of 16.
        context: extra input pixels on every side of a tile, a multiple of 16; 0 = the official
            MEMatte decoder's patches (zero-padded at every patch border, so not exact there;
            for baselines).

    Returns:
        alpha: (B, 1, H, W) in [0, 1], same dtype/device as the decoder output.
    """
    stride = decoder_stride(decoder)
    _check_multiple("tile", tile, stride)
    _check_multiple("context", context, stride, allow_zero=True)
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
        return decoder(features, as_tensor(images))

    windows = []  # (window rows, window columns, tile rows, tile columns)
    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        for x0 in range(0, w, tile):
            x1 = min(x0 + tile, w)
            windows.append(((max(y0 - context, 0), min(y1 + context, h)),
                            (max(x0 - context, 0), min(x1 + context, w)), (y0, y1), (x0, x1)))
    # the largest windows first: each later window's buffers then fit in chunks the allocator
    # already holds (in raster order, the smaller border windows came first and every larger
    # one after them took new memory: MEMatte-S at 2048², the resident peak crept 73 MiB)
    windows.sort(key=lambda win: (win[0][1] - win[0][0]) * (win[1][1] - win[1][0]), reverse=True)
    out: Tensor | None = None
    for (wy0, wy1), (wx0, wx1), (y0, y1), (x0, x1) in windows:
        # the tile alone: the fine stages skip the window's context beyond their reach
        alpha = decoder(
            features[:, :, wy0 // stride : wy1 // stride, wx0 // stride : wx1 // stride],
            crop_input(images, wy0, wy1, wx0, wx1),
            region=(y0 - wy0, y1 - wy0, x0 - wx0, x1 - wx0),
        )
        if out is None:
            out = alpha.new_empty((b, alpha.shape[1], h, w))
        out[:, :, y0:y1, x0:x1] = alpha
        del alpha
    assert out is not None
    return out


def decoder_tile_peak_bytes(
    decoder: DetailCapture,
    tile: int,
    context: int,
    feature_chans: int,
    dtype_bytes: int = 4,
    winograd: bool = False,
) -> int:
    """Estimate the peak activation memory of decoding one tile, per batch element.

    An estimate (for a later memory-budget check), not a measurement: the window is taken
    unclipped, side ``S = tile + 2 * context``, and the peak is the largest sum of tensors that
    are alive together during one fusion block or the matting head:

    * the conv-stream levels not yet fused (D0 is a view of the caller's tensor, counted
      anyway: convs may copy a non-contiguous view) and the feature crop (S/16)²·C,
    * inside fusion block ``i``: its input, the ×2 upsampled input, the concat with the detail
      level and the conv output (plus its BatchNorm copy unless the decoder folds it); with
      ``band_pixels`` (:func:`~mematte.models.decoder.in_row_bands`) these are one band's
      (its rows plus the halo) and the stage's full-size output buffer comes on top,
    * inside the head (fused with the last block): the 3×3 conv output (and BatchNorm copy),
      the logit and the sigmoid,
    * with ``winograd`` (fp32 CPU inference), the per-call buffers of each fusion conv that
      runs as a Winograd convolution (:func:`~mematte.models.winograd.scratch_elements`; its
      zero-bordered input takes the concat's place); a block that runs as one conv at its
      input's resolution (:mod:`mematte.models.upsample_conv`) holds that conv's input and
      output and the depth-to-space copy instead of the upsampled map and the concat.

    Backend workspaces (cuDNN, im2col) and allocator rounding are not counted; the
    (B, 1, H, W) output of :func:`decode_tiled` is not included either.

    Args:
        decoder: the detail-capture decoder (widths and band size are read from it).
        tile: output tile side in pixels.
        context: context pixels on every side.
        feature_chans: backbone feature channels C.
        dtype_bytes: bytes per element (4 for fp32, 2 for fp16/bf16).
        winograd: whether the decoder's Winograd convolutions run (fp32 on a CPU).

    Returns:
        Estimated peak bytes for one batch element (multiply by B).
    """
    side = tile + 2 * context
    stride = decoder_stride(decoder)
    conv_chans = decoder.convstream.conv_chans  # [4, c1, c2, c3]
    levels = [conv_chans[k] * (side // 2**k) ** 2 for k in range(len(conv_chans))]
    feats = feature_chans * (side // stride) ** 2
    band_pixels = decoder.band_pixels
    bn_copies = 1 if decoder.matting_head.fold_bn else 2
    mid_chans = decoder.matting_head.matting_convs[0].out_channels

    peak = 0
    x_chans, x_side = feature_chans, side // stride
    n = len(decoder.fusion_blks)
    for i, blk in enumerate(decoder.fusion_blks):
        out_side = x_side * 2
        detail_chans = conv_chans[n - i - 1]
        out_chans = blk.conv.conv.out_channels
        rows = out_side  # output rows computed at once
        band = band_rows(band_pixels, out_side, decoder.min_band_rows)
        if band is not None and band < out_side:
            rows = min(out_side, band + 4 * BAND_HALO)
        scratch = 0
        if winograd and blk.phase_conv_eligible(detail_chans):
            # one conv at the input resolution: its zero-bordered input (4·D + C channels on a
            # quarter of the pixels), then its 4·C_out outputs beside their depth-to-space copy
            phase_in, phase_out = blk.phase_conv_channels(detail_chans)
            per_row = max(phase_in // 4 + out_chans, 2 * out_chans) * out_side
            scratch = scratch_elements(phase_in, phase_out, math.ceil(rows / 8) * math.ceil(out_side / 8),
                                       dtype_bytes)
        else:
            per_row = (x_chans + (x_chans + detail_chans) + bn_copies * out_chans) * out_side
            if winograd and blk.conv.winograd_eligible:
                scratch = scratch_elements(x_chans + detail_chans, out_chans,
                                           math.ceil(rows / 4) * math.ceil(out_side / 4), dtype_bytes)
        if i == n - 1:  # the head runs on the same band, once up and concat are freed
            per_row = max(per_row, (out_chans + bn_copies * mid_chans + 2) * out_side)
        full_out = (1 if i == n - 1 else out_chans) * out_side**2 if rows < out_side else 0
        alive = feats + sum(levels[: n - i]) + x_chans * x_side**2
        peak = max(peak, alive + rows * per_row + full_out + scratch)
        x_chans, x_side = out_chans, out_side
    return int(peak * dtype_bytes)


def _release_after_block(*_: object) -> None:  # a hook that returned a value would replace the output
    release_free_memory()


def _lean_decoder_on_cpu(net: MattingNet, device_type: str) -> bool:
    """A CPU run with the lean decoder (BatchNorm folded), not the paper-faithful one."""
    return device_type == "cpu" and bool(getattr(net.decoder.matting_head, "fold_bn", False))


def releases_freed_memory(net: MattingNet, device_type: str) -> bool:
    """Whether :class:`Predictor` hands freed heap back to the OS between its stages: on a
    CPU, with the lean decoder (not the paper-faithful one)."""
    return _lean_decoder_on_cpu(net, device_type)


# --------------------------------------------------------------------------- routed blocks
def configure_routed_inference(
    net: nn.Module, inference: str | None = None, max_tokens: int | None = None
) -> None:
    """Override the inference rule / token cap of every routed block (None = keep)."""
    if inference is not None and inference not in INFERENCE_RULES:
        raise ValueError(f"routed inference={inference!r}: choose one of {list(INFERENCE_RULES)}")
    if max_tokens is not None and int(max_tokens) < 1:
        raise ValueError(f"max_tokens={max_tokens} must be ≥ 1 (or null for no cap)")
    routed = net.backbone.routed_blocks
    if (inference is not None or max_tokens is not None) and not routed:
        log.warning("routed inference options are set but this net has no routed blocks (ViTMatte): ignored")
    for block in routed:
        if inference is not None:
            block.inference = inference
        if max_tokens is not None:
            block.max_tokens = int(max_tokens)


# --------------------------------------------------------------------------- memory estimate
def _routed_tokens(block: RoutedBlock, n: int) -> int:
    """Worst-case tokens a routed block sends to attention (all of them unless bounded)."""
    k = n
    if block.selection == "topk":
        k = min(k, max(1, round(block.keep_ratio * n)))
    if block.max_tokens is not None:
        k = min(k, block.max_tokens)
    return k


def _residual_band_tensors(residual: ResBottleneck, rows: int, width: int, batch: int, winograd: bool) -> list[int]:
    """Elements of each tensor a conv residual's banded inference (:meth:`~mematte.models.vit.ResBottleneck.add_into`)
    holds besides the grid: this band's and the next band's C/2-wide rows, the 3×3 conv's
    input and output, then its LayerNorm and GELU (five C/2-wide band maps) and the C-wide 1×1
    conv and LayerNorm (two), plus the Winograd conv's buffers where ``winograd`` (fp32 on a
    CPU, :func:`~mematte.models.winograd.runs_on`) and the block allows it."""
    c = residual.conv3.out_channels
    mid = residual.conv2.in_channels
    winograd = winograd and residual.winograd_eligible
    if winograd:
        rows = 4 * -(-rows // 4)
    tokens = rows * width * batch
    tensors = [tokens * mid] * 5 + [tokens * c] * 2
    if winograd:
        tensors.append(scratch_elements(mid, mid, batch * -(-rows // 4) * -(-width // 4)))
    return tensors


def _backbone_peak_elements(
    backbone: ViT, grid: tuple[int, int], batch: int, element_bytes: int = 4, retains_heap: bool = False,
    winograd: bool = False,
) -> tuple[int, int, int]:
    """Largest number of activation elements alive at once in the backbone (inference).

    Returns ``(peak, matrices, heap)``: the peak; how much of it are the N×N (K×K) matrices of
    naive attention (exactly known, so the estimate's proportional margin leaves them out);
    and the heap the allocator still holds when the backbone ends (0 unless ``retains_heap``).

    ``retains_heap`` (a CPU process that does not hand freed memory back between blocks, as
    the original code): glibc serves a request below its mmap threshold (adaptive, at most
    :data:`~mematte.profiling.BOUNDED_MMAP_BYTES` on 64-bit systems) from the heap and keeps
    it resident once freed, for later requests to reuse; a larger request is a mapping of its
    own, handed back when freed. So the heap grows to the most such small tensors alive at
    once, and every later step holds that heap, or its own small tensors if more, plus its
    large ones. Measured, MEMatte-S paper-faithful: at 2048² (24 MiB token maps, 384 MiB
    K×K matrices) each routed block peaked at the resident size before it plus its K×K
    matrices; at 1024² (every tensor small, the K×K matrices too) 154 MiB stayed resident
    before the decoder; at 4096² (96 MiB token maps, mapped) the heap stayed small.
    ``winograd``: the conv residuals' 3×3 convs run as Winograd convolutions (fp32 on a CPU)
    and hold their buffers.

    Follows what the inference code allocates, tensor by tensor. With ``u = B·N·C`` (one token
    map), every block updates the residual stream ``x`` (u) in place
    (:meth:`~mematte.models.vit.Block.forward_lean`), so besides ``x`` a block holds:

    * window attention in strips (:meth:`~mematte.models.vit.Block.window_strip_attention`):
      one strip's padded qkv windows and their head split, then the rel-pos mask of one
      chunk; without token chunks or with naive attention (the original code's tensors):
      one band of whole window rows (its LayerNorm, zero-padded and
      partitioned copies, later the unpartitioned update: 3 band maps) and, per call of
      ``window_group`` windows, qkv, its head split, the attention output, the merged heads
      and the projection (9·C per token) plus the rel-pos mask of one chunk
      (:meth:`~mematte.models.attention.Attention.rel_pos_peak_elements`) or the naive path's
      logits, biased logits and softmax;
    * global attention (ViTMatte): the LayerNorm, qkv and its head split (7u), the bias mask
      of one query chunk or the N×N matrices, then the output;
    * routed blocks: the router (its LayerNorm/Linear pair and the scoring MLP's input:
      2.5u), the LTRM output (u) with one band of its 2C-wide layers, and the K gathered
      tokens (gathered, normalised, qkv, head split: 8·K·C per image), plus K×K matrices
      on the naive path;
    * the MLP: one chunk of tokens (LayerNorm, hidden layer with GELU in place, output);
    * the conv residual: :func:`_residual_band_tensors` (the whole map's layers without bands);
    * the end: the (B, C, h, w) feature copy next to ``x``; the start: the token map and one
      strip of the embedded input (normalised and concatenated, fp32).
    """
    hg, wg = grid
    n = hg * wg
    c = backbone.embed_dim
    u = batch * n * c
    p = backbone.patch_size
    small_limit = BOUNDED_MMAP_BYTES // element_bytes if retains_heap else None
    peak = heap = matrices_at_peak = 0

    def step(tensors: list[int], matrices: int = 0) -> None:
        """One step holding ``x`` and ``tensors`` (``matrices``: their naive-attention part)."""
        nonlocal peak, heap, matrices_at_peak
        if small_limit is None:
            held = u + sum(tensors)
        else:
            small = sum(t for t in tensors if t < small_limit)
            heap = max(heap, small)
            held = u + heap + sum(tensors) - small
        if held > peak:
            peak, matrices_at_peak = held, matrices

    first = backbone.blocks[0] if len(backbone.blocks) else None
    band = first.band_tokens() if first is not None else n
    strip_rows = max(1, band // max(1, batch * wg))
    # one strip of the lazily computed input, fp32: the float image, its mean-subtracted and
    # std-divided copies (3 channels each) and the concat with the trimap (4)
    embed_tokens = min(hg, strip_rows) * wg * batch
    channel = embed_tokens * p * p * 4 // element_bytes  # one fp32 channel of the strip
    step([3 * channel] * 3 + [4 * channel])
    for block in backbone.blocks:
        attn = block.attn
        heads = attn.num_heads
        band_tokens = block.band_tokens()
        if isinstance(block, RoutedBlock):
            k = _routed_tokens(block, n)
            rows = max(1, -(-2 * band_tokens // (batch * wg)))
            ltrm_layer = (min(hg, rows) + 4) * wg * batch * 2 * c
            kc = batch * k * c
            # the router: on the whole map its LayerNorm, C-wide linear and concat (the
            # original code); in chunks (Router.chunk_tokens) the kept local half of its
            # embedding and one chunk's layers
            router_chunk = getattr(block.router, "chunk_tokens", None)
            if router_chunk is None:
                step([u, u, u // 2])
            else:
                step([u // 2] + [batch * min(n, router_chunk) * c] * 4)
            step([u] + [ltrm_layer] * 3)  # the LTRM output and one band of its layers
            # the gathered tokens, normalised, qkv and its head split; K×K matrices (naive)
            matrices = [batch * heads * k * k] * 2 if attn.attn_impl == "naive" else []
            step([u, kc, kc, 3 * kc, 3 * kc] + matrices, sum(matrices))
        elif block.uses_window_strips():
            # one strip of windows at a time: its padded qkv windows and their head split (6·C
            # per window token), then q, k, v, the output and the rel-pos mask of one chunk
            s = block.window_size
            strip = batch * block.strip_windows(batch, hg, wg)  # windows per call
            mask = [attn.rel_pos_peak_elements(strip * heads, (s, s), element_bytes)] if attn.use_rel_pos else []
            step([3 * strip * s * s * c] * 2 + mask)
        elif block.window_size > 0:
            s = block.window_size
            per_row = batch * math.ceil(wg / s)
            windows = per_row * math.ceil(hg / s)
            group = block.window_group(windows)  # windows per attention call
            band_map = max(group, per_row * max(1, group // per_row)) * s * s * c
            call = group * s * s * c
            bias, matrices = [], []
            if attn.attn_impl == "naive":
                matrices = [group * heads * (s * s) ** 2] * 3  # logits, biased copy, softmax
            elif attn.use_rel_pos:
                bias = [attn.rel_pos_peak_elements(group * heads, (s, s), element_bytes)]
            step([band_map] * 3 + [3 * call] * 2 + [call] * 3 + bias + matrices, sum(matrices))
        else:
            bias, matrices = [], []
            if attn.attn_impl == "naive":
                matrices = [batch * heads * n * n] * 3
            elif attn.use_rel_pos:
                bias = [attn.rel_pos_peak_elements(batch * heads, grid, element_bytes)]
            step([u, 3 * u, 3 * u] + bias + matrices, sum(matrices))
        chunk = block.mlp.chunk_tokens
        mlp_tokens = batch * n if chunk is None else min(batch * n, chunk)
        step([mlp_tokens * c, mlp_tokens * block.mlp.fc1.out_features, mlp_tokens * c])
        if block.residual is not None:
            rows = min(hg, max(1, -(-band_tokens // (batch * wg))))
            if rows >= hg:  # one band: the branch as defined, each layer's whole map
                step([u] * 3)
            else:
                step(_residual_band_tensors(block.residual, rows, wg, batch, winograd))
    step([u])  # the features' (B, C, h, w) copy next to x
    return peak, matrices_at_peak, heap


def estimate_peak_bytes(
    net: MattingNet,
    height: int,
    width: int,
    *,
    batch: int = 1,
    tile: int | None = 512,
    context: int = 32,
    dtype_bytes: int = 4,
    device_type: str = "cpu",
) -> dict[str, int]:
    """Estimated peak memory of :class:`Predictor` on an image, before running it.

    A model of the tensors alive at the widest point of each stage, not a measurement; the
    benchmark (``bench.py``) checks it against measured peaks. Routed blocks count their
    worst case (every token routed) unless ``max_tokens`` or top-K bounds them.

    Args:
        net: the matting net.  height, width: image size (before padding).
        batch: images per call.  tile, context: decoder tiling (``tile=None``: one decoder
            call on the whole image, as the original code).
        dtype_bytes: 4 (fp32) or 2 (bf16/fp16 autocast activations).
        device_type: ``"cpu"`` or ``"cuda"``: fp32 on a CPU (few threads) runs the decoder's
            Winograd convolutions (:func:`mematte.models.winograd.runs_on`).

    Returns:
        Bytes per part: ``weights``, ``inputs`` (the encoded trimap; the image as given is
        the caller's), ``backbone`` (:func:`_backbone_peak_elements`), ``decoder`` (features,
        the alpha being filled, one tile, the Winograd-domain weights made on the first
        call; on a CPU without release between the stages also the heap the backbone left
        resident), ``finish`` (clamping the alpha), ``margin``, and
        ``total`` = weights + inputs + max(backbone, decoder, finish) + margin. (Under
        ``torch.inference_mode`` autocast keeps no cast copies of the weights: measured.)
    """
    div = net.size_divisor
    hp, wp = math.ceil(height / div) * div, math.ceil(width / div) * div
    patch = net.backbone.patch_size
    grid = (hp // patch, wp // patch)
    c = net.backbone.embed_dim
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    pixels, padded = batch * height * width, batch * hp * wp
    # the encoded fp32 trimap, alive throughout (the image stays as given: the network input
    # is computed strip by strip and window by window, LazyInput)
    inputs = 4 * pixels
    # without malloc_trim between the stages (the paper-faithful decoder, as the original
    # code) the heap freed by earlier blocks and stages stays resident (_backbone_peak_elements)
    released = releases_freed_memory(net, device_type)
    retains_heap = device_type == "cpu" and not released
    winograd = winograd_runs_on(device_type, dtype_bytes)
    backbone_elements, matrix_elements, heap_elements = _backbone_peak_elements(
        net.backbone, grid, batch, dtype_bytes, retains_heap, winograd)
    backbone = dtype_bytes * backbone_elements
    features = dtype_bytes * batch * c * grid[0] * grid[1]
    if tile is not None and (hp > tile or wp > tile):  # decode_tiled: one window of tile + context at a time
        decoder_tile = decoder_tile_peak_bytes(net.decoder, tile, context, c, dtype_bytes, winograd)
    else:  # one call on the whole (padded) image
        decoder_tile = decoder_tile_peak_bytes(net.decoder, max(hp, wp), 0, c, dtype_bytes, winograd)
    # features, the fp32 (B, 1, Hp, Wp) alpha being filled, one window, and the Winograd-domain
    # weights (kept from the first call on, so part of the first call's growth)
    decoder = features + 4 * padded + batch * decoder_tile
    if winograd:
        decoder += 4 * net.decoder.winograd_weight_elements()
    if retains_heap:
        # the decoder's buffers come on top of the heap the backbone left resident. Measured,
        # MEMatte-S paper-faithful at 1024²: 150–205 MiB resident before the decoder (about
        # 29 MiB of it live tensors; 152 MiB of heap modelled), and the peak came in the decoder
        decoder += dtype_bytes * heap_elements
    # the end: alpha, then clamping to the trimap (two torch.where, each with its
    # zeros/ones and mask) and the 8-bit rule: 17 bytes per pixel
    finish = 17 * pixels
    activations = inputs + max(backbone, decoder, finish)
    # Allocator slack, temporaries the model misses, backend workspaces and one-off costs of
    # a first run (_MARGIN_BYTES; less where freed memory is released between stages). Among
    # them: oneDNN copies the input of a channels-first conv into its blocked layout (the
    # paper-faithful decoder's last fusion conv at a 512² tile: 72 MiB, measured). Naive
    # attention's N×N matrices are exact and get no proportional margin: at 2048² they are
    # 18 GiB, and a share of that would refuse images that fit.
    exact = dtype_bytes * matrix_elements if backbone >= max(decoder, finish) else 0
    # Where the heap is kept (retains_heap), the model already counts what the allocator holds
    # (the heap under every later step), so the proportional allowance for allocator slack
    # covers the rest: on that heap as well it made the paper-faithful MEMatte-S at 1024² 18 %
    # high (524 MiB against a median of 444 over three processes)
    kept = dtype_bytes * heap_elements if retains_heap else 0
    fixed = _RELEASED_MARGIN_BYTES if released else _MARGIN_BYTES
    margin = int(_MARGIN_FRACTION * (activations - exact - kept)) + fixed
    return {
        "weights": weights,
        "inputs": inputs,
        "backbone": backbone,
        "decoder": decoder,
        "finish": finish,
        "margin": margin,
        "total": weights + activations + margin,
    }


# decoder tiles auto_tile chooses from, largest first (fewer overlapping windows, less time)
AUTO_TILES: tuple[int, ...] = (2048, 1536, 1024, 768, 512, 384, 256)
# without a budget, tiles below this are not worth their extra overlap (time) on CPU
AUTO_MIN_TILE = 512


def auto_tile(
    net: MattingNet,
    height: int,
    width: int,
    *,
    batch: int = 1,
    context: int = 32,
    dtype_bytes: int = 4,
    budget_bytes: int | None = None,
    device_type: str = "cpu",
) -> int:
    """Decoder tile from the memory budget: the largest of :data:`AUTO_TILES` whose estimated
    peak (:func:`estimate_peak_bytes`) fits ``budget_bytes`` (the smallest when none does).
    Without a budget: the largest whose decoder part stays under the backbone's, so the
    decoder adds no peak of its own, but at least :data:`AUTO_MIN_TILE`.
    """
    for tile in AUTO_TILES:
        if budget_bytes is None and tile <= AUTO_MIN_TILE:
            return AUTO_MIN_TILE
        parts = estimate_peak_bytes(net, height, width, batch=batch, tile=tile, context=context,
                                    dtype_bytes=dtype_bytes, device_type=device_type)
        if (parts["total"] <= budget_bytes) if budget_bytes is not None else (parts["decoder"] <= parts["backbone"]):
            return tile
    return AUTO_TILES[-1]


class MemoryBudgetError(RuntimeError):
    """The estimated peak exceeds the memory budget; raised before anything runs."""


# --------------------------------------------------------------------------- predictor
@dataclass
class Prediction:
    """Predictor result.

    Attributes:
        alpha: (B, 1, H, W) float32 in [0, 1], clamped to the trimap's known regions.
        routing: per routed block decisions (empty for ViTMatte).
        estimate: the peak-memory estimate it was admitted with (bytes per part).
    """

    alpha: Tensor
    routing: list[RoutingInfo] = field(default_factory=list)
    estimate: dict[str, int] = field(default_factory=dict)


class Predictor:
    """Alpha mattes of full-resolution images, batch by batch, within a memory budget.

    The backbone runs on the whole padded image (window attention, exact fused global
    attention, routed attention on the gathered tokens); the decoder runs in tiles with
    context (:func:`decode_tiled`); the prediction is clamped to the trimap's known regions.

    Args:
        net: the matting net (ViTMatte or MEMatte); put in eval mode.
        device: where to run (``"cpu"``, ``"cuda"``...).
        precision: ``auto`` (bf16 autocast on CUDA GPUs that support it, else fp16; on CPU
            bf16 where the CPU has native bf16 and the accuracy guard of
            :mod:`mematte.precision` holds for the weights, else fp32), ``fp32``, ``bf16``
            (no guard) or ``fp16``.
        tile, context: decoder tiling (multiples of 16); ``tile=None`` decodes the whole image
            in one call (the original code's way, for baselines: full-resolution activations);
            ``tile="auto"`` picks one per image size (:meth:`choose_tile`).
        memory_budget_gb: refuse images whose estimated peak exceeds this; None = no check.
        max_tokens: cap on global-attention tokens per routed block and image (None: the
            preset's — none for ``default``, 18,500 for ``official`` MEMatte).
        routed_inference: ``argmax`` or ``expected`` for routed blocks (None = as built).
        preset: ``default`` (ours) or ``official``: the released scripts' trimap values,
            padding, token cap, clamping and 8-bit truncation (:mod:`mematte.presets`).
    """

    def __init__(
        self,
        net: MattingNet,
        device: str | torch.device = "cpu",
        precision: Precision = "auto",
        tile: int | Literal["auto"] | None = 512,
        context: int = 32,
        memory_budget_gb: float | None = None,
        max_tokens: int | None = None,
        routed_inference: str | None = None,
        preset: str = "default",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: choose one of {list(PRECISIONS)}")
        stride = decoder_stride(net.decoder)
        if tile is not None and tile != "auto":
            _check_multiple("tile", tile, stride)
        _check_multiple("context", context, stride, allow_zero=True)
        radius = decoder_context_radius(net.decoder)
        if 0 < context <= radius:
            log.warning("context=%d px does not cover the decoder's %d px receptive-field radius: tiles "
                        "differ from the untiled result near their borders (use context=%d)",
                        context, radius, stride * (radius // stride + 1))
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.rules = inference_rules(preset, bool(self.net.is_routed))
        if max_tokens is None:
            max_tokens = self.rules.max_tokens
        configure_routed_inference(self.net, routed_inference, max_tokens)
        if not self.rules.winograd:  # like the token cap, a setting of the net from here on
            self.net.decoder.winograd = False
            self.net.backbone.winograd = False
        self.precision = precision
        if precision == "bf16" and self.device.type == "cpu":
            from mematte.precision import BF16_CPU_FLAGS, cpu_bf16_supported

            if not cpu_bf16_supported():
                log.warning("precision=bf16 on a CPU without native bf16 (%s): oneDNN emulates it, "
                            "about 9x slower than fp32 and with buffers the memory estimate does not "
                            "count; use precision=auto or fp32", " / ".join(BF16_CPU_FLAGS))
        self.tile = tile
        self.context = context
        self.memory_budget_gb = memory_budget_gb
        # precision=auto on CPU: resolved once, on first use (mematte.precision: bf16 where the
        # CPU has it and the accuracy guard holds for these weights)
        self.guard: GuardResult | None = None
        # the decoder in channels-last on CPU (faster, same values to rounding); not for the
        # paper-faithful decoder (lean_inference=False), which keeps the original code's layout
        self.channels_last = _lean_decoder_on_cpu(self.net, self.device.type)
        self._cpu_auto_dtype: torch.dtype | None = None
        self._cpu_auto_resolved = False
        # CPU: hand the freed heap back to the OS after the backbone and after the decoder
        # (release_free_memory). In between, for images whose token map is under
        # BLOCK_RELEASE_MIN_TOKEN_MAP_BYTES, glibc reuses freed buffers instead of unmapping
        # them and faulting fresh pages in (profiling.tune_heap, process-wide); for larger
        # ones, whose buffers do not fit the holes freed ones leave, large buffers are unmapped
        # when freed and the heap is released after every backbone block too (MEMatte-S at
        # 4096², first call, measured: 676–845 MiB without, 631 with). Not for the
        # paper-faithful decoder, whose peak is the original code's.
        self.release_between_stages = releases_freed_memory(self.net, self.device.type)

    def _token_map_bytes(self, height: int, width: int, batch: int) -> int:
        """Bytes of one fp32 (B, N, C) token map of the backbone for an image of this size."""
        hp, wp = padded_size(height, width, self.net.size_divisor, self.rules.padding)
        patch = self.net.backbone.patch_size
        return 4 * batch * (hp // patch) * (wp // patch) * self.net.backbone.embed_dim

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Activation dtype under autocast, or None for fp32.

        ``auto``: bf16 (fp16 without bf16) on CUDA; on a CPU bf16 only where it runs natively
        and the accuracy guard holds for these weights (:meth:`resolve_cpu_auto`), else fp32.
        """
        if self.precision == "fp32":
            return None
        if self.precision == "auto":
            if self.device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return self.resolve_cpu_auto() if self.device.type == "cpu" else None
        return torch.bfloat16 if self.precision == "bf16" else torch.float16

    def resolve_cpu_auto(self) -> torch.dtype | None:
        """``precision=auto`` on CPU, decided once per predictor (the verdict is also cached on
        disk per weights): :func:`mematte.precision.resolve_auto_cpu`. The guard's evidence,
        when it ran or was cached, is in :attr:`guard`."""
        if not self._cpu_auto_resolved:
            from mematte.precision import resolve_auto_cpu

            self._cpu_auto_dtype, self.guard = resolve_auto_cpu(self)
            self._cpu_auto_resolved = True
        return self._cpu_auto_dtype

    def choose_tile(self, height: int, width: int, batch: int = 1) -> int | None:
        """The decoder tile for an image: ``tile`` as given, or :func:`auto_tile` for ``"auto"``."""
        if self.tile != "auto":
            return self.tile
        budget = None if self.memory_budget_gb is None else int(self.memory_budget_gb * GIB)
        if self.rules.padding != "aligned":
            height, width = padded_size(height, width, self.net.size_divisor, self.rules.padding)
        return auto_tile(self.net, height, width, batch=batch, context=self.context,
                         dtype_bytes=4 if self.autocast_dtype is None else 2, budget_bytes=budget,
                         device_type=self.device.type)

    def _estimate(self, height: int, width: int, batch: int, tile: int | None) -> dict[str, int]:
        dtype_bytes = 4 if self.autocast_dtype is None else 2
        if self.rules.padding != "aligned":  # the preset's padded size is what runs
            height, width = padded_size(height, width, self.net.size_divisor, self.rules.padding)
        return estimate_peak_bytes(self.net, height, width, batch=batch, tile=tile,
                                   context=self.context, dtype_bytes=dtype_bytes,
                                   device_type=self.device.type)

    def estimate(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Peak-memory estimate for an image size (see :func:`estimate_peak_bytes`), with the
        tile :meth:`choose_tile` picks."""
        return self._estimate(height, width, batch, self.choose_tile(height, width, batch))

    def check_budget(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """The estimate, or :class:`MemoryBudgetError` naming it and the fix."""
        estimate = self.estimate(height, width, batch)
        if self.memory_budget_gb is not None and estimate["total"] > self.memory_budget_gb * GIB:
            parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in estimate.items() if k != "total")
            hint = (
                "lower max_tokens (caps global-attention tokens of routed blocks)"
                if self.net.is_routed
                else "use a routed MEMatte checkpoint or a smaller image"
            )
            raise MemoryBudgetError(
                f"a {width}×{height} image (batch {batch}) needs an estimated "
                f"{estimate['total'] / GIB:.2f} GiB (GiB: {parts}), over the "
                f"{self.memory_budget_gb:g} GiB budget. Fix: {hint}, use smaller decoder tiles "
                f"(tile={self.tile} now; 512 is the default), bf16/fp16 precision on GPU, or raise the budget."
            )
        return estimate

    def __call__(self, image: Tensor, trimap: Tensor) -> Prediction:
        """Predict alpha.

        Args:
            image: (3, H, W) or (B, 3, H, W) RGB, float in [0, 1] or uint8.
            trimap: (H, W), (1, H, W) or (B, 1, H, W), uint8 0..255 or float in [0, 1].

        Returns:
            :class:`Prediction` with alpha (B, 1, H, W) float32 on the CPU.
        """
        if image.ndim == 3:
            image = image[None]
        while trimap.ndim < 4:
            trimap = trimap[None]
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (3, H, W) or (B, 3, H, W) RGB, got {tuple(image.shape)}")
        if trimap.shape[1] != 1 or trimap.shape[-2:] != image.shape[-2:] or trimap.shape[0] != image.shape[0]:
            raise ValueError(
                f"trimap {tuple(trimap.shape)} does not match image {tuple(image.shape)}: it "
                "needs one channel and the image's height and width"
            )
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"image dtype {image.dtype} unsupported: pass uint8 or float in [0, 1]")
        b, _, h, w = image.shape
        estimate = self.check_budget(h, w, b)
        trimap = encode_trimap(trimap, self.rules.trimap_encoding).to(self.device)
        # uint8 stays uint8: each window of the network input is divided by 255 when needed
        image = image.to(self.device) if image.dtype == torch.uint8 else image.float().to(self.device)
        dtype = self.autocast_dtype
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            # the normalised, padded input, computed strip by strip (patch embedding) and
            # window by window (decoder): no full-resolution float copy of the image
            x = self.net.lazy_inputs(image, trimap, self.rules.padding)
            del image
            hooks = []
            if self.release_between_stages:
                large = self._token_map_bytes(h, w, b) >= BLOCK_RELEASE_MIN_TOKEN_MAP_BYTES
                tune_heap(reuse=not large)
                if large:
                    hooks = [block.register_forward_hook(_release_after_block) for block in self.net.backbone.blocks]
            try:
                backbone_out = self.net.backbone(x)
            finally:
                for hook in hooks:
                    hook.remove()
            routing = backbone_out.routing
            if self.release_between_stages:
                release_free_memory()
            if self.channels_last:
                # the decoder in channels-last, oneDNN's native CPU layout: no reorder around
                # every conv, vectorised bilinear upsampling (measured 1.9× faster in bf16, 1.4×
                # in fp32). Under bf16 x comes in bf16, which is exact: every conv casts its
                # input to bf16 anyway (the fp32 concat of x with a bf16 level was a detour).
                x = x.to(dtype=dtype, memory_format=torch.channels_last) if dtype == torch.bfloat16 \
                    else x.to(memory_format=torch.channels_last)
                backbone_out.features = backbone_out.features.contiguous(memory_format=torch.channels_last)
            if self.tile is None:
                alpha = self.net.decoder(backbone_out.features, as_tensor(x))
            else:
                tile = self.choose_tile(h, w, b)
                alpha = decode_tiled(self.net.decoder, backbone_out.features, x, tile, self.context)
            del x, backbone_out  # free the full-resolution input and the features early
            if self.release_between_stages:
                release_free_memory()
            alpha = finish_alpha(alpha[..., :h, :w], trimap, self.rules)
        return Prediction(alpha=alpha.cpu(), routing=routing, estimate=estimate)
