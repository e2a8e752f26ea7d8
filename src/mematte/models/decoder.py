"""ViTMatte's detail-capture decoder: a light conv stream fused with the ViT features.

Names follow the official code (``convstream.convs.{i}.{conv,bn}``,
``fusion_blks.{i}.conv.{conv,bn}``, ``matting_head.matting_convs.{0,1,3}``).

Inference (autograd off, eval mode) differs in ways that only save memory and time, with the
same values up to fp32 rounding: BatchNorm is folded into the preceding conv (no second copy
of every conv output); each fusion stage is computed in bands of output rows
(:meth:`DetailCapture.forward`), so the ×2 upsampled input and its concat with the detail
level, the widest tensors of the decoder, exist for one band at a time instead of the whole
window; and on a CPU in fp32 the wide fusion convs run as Winograd F(4×4, 3×3) convolutions
(:mod:`mematte.models.winograd`: 2.25× fewer multiply-adds, rounding error a few times a
direct convolution's; ``winograd=False`` turns them off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mematte.models.upsample_conv import depth_to_space, pack_phase_input, phase_conv_weight
from mematte.models.winograd import (
    PaddedInput,
    cached_winograd_weight,
    conv3x3_winograd_padded,
    conv_qualifies,
    input_qualifies,
    winograd_switch,
)

# Which borders of a stage's input are borders of the whole input (top, bottom, left, right):
# a band of rows from :func:`in_row_bands` has real borders only where it reaches the edge.
Edges = tuple[bool, bool, bool, bool]
ALL_EDGES: Edges = (True, True, True, True)


class ConvBNReLU(nn.Module):
    """3×3 conv (no bias) + BatchNorm + ReLU (``Basic_Conv3x3`` in ViTMatte)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)
        self.fold_bn = True  # at inference: BatchNorm folded into the conv (see DetailCapture)
        self.winograd = True  # at fp32 CPU inference: Winograd F(4×4, 3×3) where it gains

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, C_out, H/stride, W/stride)."""
        if not self.fold_bn or self.training or torch.is_grad_enabled():
            return self.relu(self.bn(self.conv(x)))
        if self.uses_winograd(x):
            return self.forward_padded(PaddedInput.holding(x))
        weight, bias = fold_batchnorm(self.conv, self.bn)
        return F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding).relu_()

    @property
    def winograd_eligible(self) -> bool:
        """Whether fp32 CPU inference runs this conv as a Winograd convolution."""
        return self.winograd and self.fold_bn and conv_qualifies(self.conv)

    def uses_winograd(self, x: Tensor) -> bool:
        """Whether inference on ``x`` runs as a Winograd convolution (:meth:`forward_padded`)."""
        return self.winograd_eligible and not self.training and input_qualifies(x)

    def folded_sources(self) -> tuple[Tensor, ...]:
        """The tensors the folded weight and bias derive from (keys of the Winograd caches)."""
        bn = self.bn
        return (self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)

    def forward_padded(self, padded: PaddedInput) -> Tensor:
        """Inference by Winograd F(4×4, 3×3) on an input written into ``padded``:
        (B, C_in, H, W) → (B, C_out, H, W), channels-last."""
        weight_t, bias = cached_winograd_weight(self, self.folded_sources(), lambda: fold_batchnorm(self.conv, self.bn))
        return conv3x3_winograd_padded(padded, weight_t, bias, relu=True)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, BatchNorm in eval mode (running stats).

    Returns:
        weight (C_out, C_in, k, k) and bias (C_out,), in the conv weight's dtype.
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


class ConvStream(nn.Module):
    """Stride-2 conv pyramid over the 4-channel input: detail features at 1/2, 1/4, 1/8.

    Args:
        in_chans: input channels (4).
        out_chans: widths of the three levels (48, 96, 192).
    """

    def __init__(self, in_chans: int = 4, out_chans: Sequence[int] = (48, 96, 192)) -> None:
        super().__init__()
        self.conv_chans = [in_chans, *out_chans]
        self.convs = nn.ModuleList(
            ConvBNReLU(cin, cout) for cin, cout in zip(self.conv_chans[:-1], self.conv_chans[1:])
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, 4, H, W) → [D0 = x (1/1), D1 (1/2), D2 (1/4), D3 (1/8)]."""
        levels = [x]
        for conv in self.convs:
            x = conv(x)
            levels.append(x)
        return levels


class FusionBlock(nn.Module):
    """Upsample ×2 (bilinear), concatenate a detail level, 3×3 conv + BN + ReLU.

    At fp32 CPU inference a block whose conv is too narrow for a Winograd convolution at the
    output resolution (the last one: 68 → 32) runs as one Winograd conv at the input's
    resolution instead (:mod:`mematte.models.upsample_conv`: 80 → 128 for the last block,
    3.4× fewer multiply-adds than the direct conv, and no full-resolution upsampled map or
    concat); ``phase_conv = False`` turns that off.
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chans, out_chans, stride=1)
        self.phase_conv = True

    def forward(self, x: Tensor, detail: Tensor, edges: Edges = ALL_EDGES) -> Tensor:
        """x: (B, C, h, w), detail: (B, D, 2h, 2w) → (B, C_out, 2h, 2w).

        Args:
            edges: which sides of ``x`` are borders of the whole input (top, bottom, left,
                right); a side that is not may be wrong in its outermost output row or column
                (callers that pass False crop those rows, :func:`in_row_bands`).
        """
        if self.uses_phase_conv(x, detail):
            return self._forward_phase_conv(x, detail, edges)
        return self._forward_upsampled(x, detail)

    def _forward_upsampled(self, x: Tensor, detail: Tensor) -> Tensor:
        """:meth:`forward` as the block is defined: the upsampled map and the concat."""
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if not self.conv.uses_winograd(up):
            return self.conv(torch.cat([detail, up], dim=1))
        # the concat written straight into the Winograd conv's zero-bordered input
        b, d, h, w = detail.shape
        padded = PaddedInput(up, b, d + up.shape[1], h, w)
        padded.interior[:, :d] = detail
        padded.interior[:, d:] = up
        del up
        return self.conv.forward_padded(padded)

    def phase_conv_channels(self, detail_chans: int) -> tuple[int, int]:
        """(input, output) channels of the phase-form conv: (4·D + C, 4·C_out)."""
        c_in = self.conv.conv.in_channels
        return 4 * detail_chans + c_in - detail_chans, 4 * self.conv.conv.out_channels

    def phase_conv_eligible(self, detail_chans: int) -> bool:
        """Whether fp32 CPU inference runs this block as a phase-form Winograd conv: its own
        conv is too narrow for Winograd, the phase form's is wide enough."""
        conv = self.conv
        if not (self.phase_conv and conv.winograd and conv.fold_bn) or conv.winograd_eligible:
            return False
        c_in, c_out = self.phase_conv_channels(detail_chans)
        return conv_qualifies(conv.conv, channel_product=c_in * c_out)

    def uses_phase_conv(self, x: Tensor, detail: Tensor) -> bool:
        """Whether inference on ``x`` and ``detail`` runs as a phase-form Winograd conv."""
        return not self.training and input_qualifies(x) and self.phase_conv_eligible(detail.shape[1])

    def _forward_phase_conv(self, x: Tensor, detail: Tensor, edges: Edges) -> Tensor:
        """:meth:`forward` as a Winograd conv at the resolution of ``x`` (channels-last out)."""
        b, c, h, w = x.shape
        d = detail.shape[1]
        conv, bn = self.conv.conv, self.conv.bn

        def phase_weight_and_bias() -> tuple[Tensor, Tensor]:
            weight, bias = fold_batchnorm(conv, bn)
            return phase_conv_weight(weight, d), bias.repeat(4)

        weight_t, bias = cached_winograd_weight(self, self.conv.folded_sources(), phase_weight_and_bias)
        padded = PaddedInput(x, b, 4 * d + c, h, w)
        pack_phase_input(padded.buffer, x, detail)
        y = conv3x3_winograd_padded(padded, weight_t, bias, relu=True)
        del padded
        out = depth_to_space(y, conv.out_channels)
        del y
        # the outermost rows/columns read the zero padding of the upsampled map, which the
        # phase form (replicate-padded x) does not see: recompute them as the block is defined
        top, bottom, left, right = edges
        for keep, (r0, r1, c0, c1) in (
            (top, (0, 1, 0, 2 * w)), (bottom, (2 * h - 1, 2 * h, 0, 2 * w)),
            (left, (0, 2 * h, 0, 1)), (right, (0, 2 * h, 2 * w - 1, 2 * w)),
        ):
            if keep:
                out[:, :, r0:r1, c0:c1] = self._upsampled_window(x, detail, r0, r1, c0, c1)
        return out

    def _upsampled_window(self, x: Tensor, detail: Tensor, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """Output rows [r0, r1) and columns [c0, c1) by :meth:`_forward_upsampled`, from the
        input pixels within :data:`BAND_HALO` of them (exact, see :func:`in_row_bands`)."""
        h, w = x.shape[-2:]
        lo, hi = max(0, r0 // 2 - BAND_HALO), min(h, r1 // 2 + BAND_HALO)
        lo_c, hi_c = max(0, c0 // 2 - BAND_HALO), min(w, c1 // 2 + BAND_HALO)
        y = self._forward_upsampled(x[:, :, lo:hi, lo_c:hi_c], detail[:, :, 2 * lo : 2 * hi, 2 * lo_c : 2 * hi_c])
        return y[:, :, r0 - 2 * lo : r1 - 2 * lo, c0 - 2 * lo_c : c1 - 2 * lo_c]


# Input rows of context on each side of a band. Output rows [2·s0, 2·s1) of the head read
# fusion rows ±1, which read upsampled rows ±1 more, i.e. [2·s0 − 2, 2·s1 + 2); upsampled row
# i reads source rows ⌊i/2 − 1/4⌋ and the next, so source rows [s0 − 2, s1 + 2), and a slice
# from s0 − 2 computes its upsampled rows from 2·(s0 − 2) + 1 on without clamping. 2 source
# rows keep every band row exact (tests compare with the unbanded pass).
BAND_HALO = 2

# Fewest output rows per band of a fusion stage at inference. A band recomputes 2·BAND_HALO
# input rows (4·BAND_HALO = 8 output rows) of its neighbours' context, so with 64 rows that
# overhead stays at 1/8. The band size alone made the last stage of a 512-px tile 30 rows
# high (its halo then a quarter of the stage's and the head's work): 64 rows took 0.8 s off
# the decoder at 2048² (one thread), with no change in the measured peak.
MIN_BAND_ROWS = 64


def band_rows(band_pixels: int | None, width: int, min_rows: int = MIN_BAND_ROWS) -> int | None:
    """Output rows per band of a fusion stage whose output is ``width`` pixels wide: about
    ``band_pixels`` pixels but at least ``min_rows`` rows, even (:func:`in_row_bands`); None
    (no bands) for ``band_pixels=None``."""
    if band_pixels is None:
        return None
    return max(2, min_rows // 2 * 2, band_pixels // max(1, width) // 2 * 2)


def in_row_bands(
    stage: Callable[[Tensor, Tensor, Edges], Tensor],
    x: Tensor,
    detail: Tensor,
    band_rows: int | None,
    region: tuple[int, int, int, int] | None = None,
    x_origin: tuple[int, int] = (0, 0),
) -> Tensor:
    """``stage(x, detail)`` (a ×2 fusion block, optionally followed by the head) in bands of
    output rows, each from its input rows plus :data:`BAND_HALO` rows of context; optionally
    only over a region of the output.

    Exact for any region: an output pixel reads input rows and columns within
    :data:`BAND_HALO` of its own (halved), and each slice reaches that far on every side
    where the input has pixels, as the whole pass would.

    Args:
        stage: maps x (B, C, h, w), detail (B, D, 2h, 2w) and which sides of x are borders
            of the whole input (:data:`Edges`) to (B, C_out, 2h, 2w); it may be wrong in the
            outermost output row or column of a side that is not.
        x: the stage input, (B, C, h, w), or the part of it from ``x_origin`` on that covers
            the region's input rows and columns (halved) plus :data:`BAND_HALO` on each side
            (clipped to the input).
        detail: (B, D, 2h, 2w) detail level, whole.
        band_rows: output rows per band (even); None or ≥ the region's height = one call.
        region: output rows [r0, r1) and columns [c0, c1) as (r0, r1, c0, c1), all even;
            None = the whole output.
        x_origin: (row, column) of ``x[..., 0, 0]`` in the whole input.

    Returns:
        (B, C_out, r1 − r0, c1 − c0), equal to ``stage(x, detail)`` over the region.
    """
    h, w = detail.shape[-2] // 2, detail.shape[-1] // 2
    if region is None:
        if x_origin == (0, 0) and tuple(x.shape[-2:]) == (h, w) and (band_rows is None or band_rows >= 2 * h):
            return stage(x, detail, ALL_EDGES)
        region = (0, 2 * h, 0, 2 * w)
    r0, r1, c0, c1 = region
    if min(region) < 0 or r1 > 2 * h or c1 > 2 * w or any(v % 2 for v in region):
        raise ValueError(f"region {region} must be even and inside the {2 * h}×{2 * w} output")
    oy, ox = x_origin
    # input columns of the region plus the halo (clipped), the same for every band
    lo_c, hi_c = max(0, c0 // 2 - BAND_HALO), min(w, c1 // 2 + BAND_HALO)
    out: Tensor | None = None
    step = (r1 - r0) // 2 if band_rows is None else max(1, band_rows // 2)  # input rows per band
    for s0 in range(r0 // 2, r1 // 2, step):
        s1 = min(s0 + step, r1 // 2)
        lo, hi = max(0, s0 - BAND_HALO), min(h, s1 + BAND_HALO)
        if lo < oy or hi - oy > x.shape[-2] or lo_c < ox or hi_c - ox > x.shape[-1]:
            raise ValueError(f"x (origin {x_origin}, {tuple(x.shape[-2:])}) does not cover "
                             f"the input rows {lo}:{hi} and columns {lo_c}:{hi_c} of region {region}")
        y = stage(x[:, :, lo - oy : hi - oy, lo_c - ox : hi_c - ox], detail[:, :, 2 * lo : 2 * hi, 2 * lo_c : 2 * hi_c],
                  (lo == 0, hi == h, lo_c == 0, hi_c == w))
        if out is None:  # in the stage's layout (channels-last on CPU, see Predictor)
            fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            out = torch.empty((*y.shape[:2], r1 - r0, c1 - c0), dtype=y.dtype, device=y.device, memory_format=fmt)
        out[:, :, 2 * s0 - r0 : 2 * s1 - r0] = y[:, :, 2 * (s0 - lo) : 2 * (s1 - lo), c0 - 2 * lo_c : c1 - 2 * lo_c]
        del y
    assert out is not None
    return out


class MattingHead(nn.Module):
    """3×3 conv → BN → ReLU → 1×1 conv to one alpha logit."""

    def __init__(self, in_chans: int = 32, mid_chans: int = 16) -> None:
        super().__init__()
        self.matting_convs = nn.Sequential(
            nn.Conv2d(in_chans, mid_chans, 3, 1, 1),
            nn.BatchNorm2d(mid_chans),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chans, 1, 1, 1, 0),
        )
        self.fold_bn = True  # at inference: BatchNorm folded into the conv (see DetailCapture)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → logits (B, 1, H, W)."""
        if not self.fold_bn or self.training or torch.is_grad_enabled():
            return self.matting_convs(x)
        conv, bn, _, out = self.matting_convs
        weight, bias = fold_batchnorm(conv, bn)
        return out(F.conv2d(x, weight, bias, conv.stride, conv.padding).relu_())


class DetailCapture(nn.Module):
    """Detail-capture decoder (ViTMatte): ViT features + conv stream → alpha in [0, 1].

    Args:
        in_chans: ViT channels C.
        img_chans: input channels of the conv stream (4).
        convstream_out: conv-stream widths at 1/2, 1/4, 1/8.
        fusion_out: fusion widths at 1/8, 1/4, 1/2, 1/1.
        band_pixels: output pixels per band of a fusion stage at inference (:func:`in_row_bands`;
            16,384 = 16 rows of a 1024-wide window: a 1/2-resolution band of 368 channels is
            then 24 MiB; None = each stage at once), but at least ``min_band_rows`` rows.
        min_band_rows: fewest output rows per band (:data:`MIN_BAND_ROWS`: the recomputed
            context rows stay an eighth of a band).
        lean_inference: fold BatchNorm and compute in bands at inference (exact; less memory
            and time). False = the original code's tensors, for paper-faithful baselines.
        winograd: at fp32 CPU inference with ``lean_inference``, run the wide 3×3 fusion convs
            as Winograd F(4×4, 3×3) convolutions (:mod:`mematte.models.winograd`; faster, equal
            to a direct convolution up to fp32 rounding). Settable at run time.
    """

    def __init__(
        self,
        in_chans: int = 384,
        img_chans: int = 4,
        convstream_out: Sequence[int] = (48, 96, 192),
        fusion_out: Sequence[int] = (256, 128, 64, 32),
        band_pixels: int | None = 16384,
        min_band_rows: int = MIN_BAND_ROWS,
        lean_inference: bool = True,
        winograd: bool = True,
    ) -> None:
        super().__init__()
        if len(fusion_out) != len(convstream_out) + 1:
            raise ValueError(
                f"fusion_out needs one more level than convstream_out, got {list(fusion_out)} "
                f"and {list(convstream_out)}"
            )
        self.convstream = ConvStream(img_chans, convstream_out)
        conv_chans = self.convstream.conv_chans
        fus_chans = [in_chans, *fusion_out]
        self.fusion_blks = nn.ModuleList(
            FusionBlock(fus_chans[i] + conv_chans[-(i + 1)], fus_chans[i + 1])
            for i in range(len(fusion_out))
        )
        self.matting_head = MattingHead(fusion_out[-1])
        # output pixels (rows × width) per band of a fusion stage at inference; None = whole
        # stage at once (settable at run time)
        self.band_pixels: int | None = band_pixels if lean_inference else None
        self.min_band_rows = min_band_rows
        for module in self.modules():
            if isinstance(module, (ConvBNReLU, MattingHead)):
                module.fold_bn = lean_inference
        self.winograd = winograd

    @property
    def winograd(self) -> bool:
        """Whether fp32 CPU inference runs the wide fusion convs as Winograd convolutions."""
        return winograd_switch(self, ConvBNReLU)

    @winograd.setter
    def winograd(self, value: bool) -> None:
        winograd_switch(self, ConvBNReLU, value)

    def winograd_weight_elements(self) -> int:
        """Elements of the Winograd-domain weights fp32 CPU inference keeps (36 per input/output
        channel pair of every conv that runs as a Winograd convolution, 4× their weights; for
        a block run in the phase form, of its phase-form conv)."""
        total = sum(36 * m.conv.in_channels * m.conv.out_channels
                    for m in self.modules() if isinstance(m, ConvBNReLU) and m.winograd_eligible)
        details = self.convstream.conv_chans[::-1]  # the detail level each block fuses
        for blk, d in zip(self.fusion_blks, details):
            if blk.phase_conv_eligible(d):
                c_in, c_out = blk.phase_conv_channels(d)
                total += 36 * c_in * c_out
        return total

    def forward(self, features: Tensor, images: Tensor,
                region: tuple[int, int, int, int] | None = None) -> Tensor:
        """features: (B, C, H/16, W/16), images: (B, 4, H, W) normalised → alpha (B, 1, H, W).

        At inference (autograd off), every fusion stage runs in bands of ``band_pixels``
        output pixels (:func:`in_row_bands`), the last one together with the head, so only
        stage inputs and outputs exist at full size.

        Args:
            region: output rows [r0, r1) and columns [c0, c1) as (r0, r1, c0, c1), multiples
                of 8, to compute alpha for only (inference; a tile inside its context window,
                :func:`~mematte.inference.decode_tiled`). The last two stages (1/2 and full
                resolution) then run on the region plus the few pixels they read around it,
                not on the whole input; the result equals the same crop of the whole output.

        Returns:
            alpha (B, 1, H, W), or (B, 1, r1 − r0, c1 − c0) for a region.
        """
        details = self.convstream(images)
        last = len(self.fusion_blks) - 1
        # the region of each stage's output that is needed: the last stage's is ``region``;
        # the stage before needs its input rows/columns plus the halo (in_row_bands)
        regions: list[tuple[int, int, int, int] | None] = [None] * (last + 1)
        if region == (0, images.shape[-2], 0, images.shape[-1]):
            region = None  # the whole output: the plain pass (the paper-faithful decoder's tensors)
        if region is not None:
            if any(v % 8 for v in region):
                raise ValueError(f"region {region} must be in multiples of 8 pixels")
            regions[last] = region
            h, w = images.shape[-2] // 2, images.shape[-1] // 2
            r0, r1, c0, c1 = region
            regions[last - 1] = (max(0, r0 // 2 - BAND_HALO), min(h, r1 // 2 + BAND_HALO),
                                 max(0, c0 // 2 - BAND_HALO), min(w, c1 // 2 + BAND_HALO))
        x, origin = features, (0, 0)
        for i, fusion in enumerate(self.fusion_blks):
            stage = self._last_fusion_and_head if i == last else fusion
            band = None
            if self.band_pixels is not None and not torch.is_grad_enabled():
                width = 2 * x.shape[-1] if regions[i] is None else regions[i][3] - regions[i][2]
                band = band_rows(self.band_pixels, width, self.min_band_rows)
            x = in_row_bands(stage, x, details[last - i], band, regions[i], origin)
            if regions[i] is not None:
                origin = (regions[i][0], regions[i][2])
            details[last - i] = None  # a level is no longer needed once fused
        return x

    def _last_fusion_and_head(self, x: Tensor, detail: Tensor, edges: Edges = ALL_EDGES) -> Tensor:
        """Last fusion block, head and sigmoid: (B, C, h, w), (B, 4, 2h, 2w) → (B, 1, 2h, 2w)."""
        return torch.sigmoid(self.matting_head(self.fusion_blks[-1](x, detail, edges)))
