"""The last fusion block as one Winograd conv at its input's resolution (upsample_conv):
exact in float64 away from the border, exact everywhere once the border is recomputed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mematte.inference import decoder_tile_peak_bytes
from mematte.models.decoder import DetailCapture, FusionBlock
from mematte.models.upsample_conv import depth_to_space, pack_phase_input, phase_conv_weight
from mematte.models.winograd import PaddedInput, conv3x3_winograd_padded, winograd_weight
from tests.test_winograd import decoder_inputs, one_thread, randomise_batchnorm, vitmatte_decoder

__all__ = ["one_thread"]  # the autouse fixture: Winograd runs on few threads only


def upsample_then_conv(x: torch.Tensor, detail: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The fusion block's definition: conv(cat[detail, bilinear ×2 (x)]), zero-padded."""
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return F.conv2d(torch.cat([detail, up], dim=1), weight, None, 1, 1)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (2, 3), (5, 4), (9, 13)])
def test_phase_conv_is_the_block_in_float64_inside_the_border(h, w):
    """Packed input, phase weight, Winograd and depth-to-space reproduce the block to 1e-12
    everywhere but the outermost output row/column on each side (where the block's conv reads
    its zero padding and the phase form the replicated edge)."""
    g = torch.Generator().manual_seed(0)
    c, d, c_out = 6, 3, 5
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    detail = torch.randn(2, d, 2 * h, 2 * w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, d + c, 3, 3, generator=g, dtype=torch.float64)
    ref = upsample_then_conv(x, detail, weight)

    phase = phase_conv_weight(weight, d)
    assert phase.shape == (4 * c_out, 4 * d + c, 3, 3) and phase.dtype == torch.float64
    padded = PaddedInput(x, 2, 4 * d + c, h, w)
    pack_phase_input(padded.buffer, x, detail)
    y = conv3x3_winograd_padded(padded, winograd_weight(phase))
    out = depth_to_space(y, c_out)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-12, rtol=0)
    if h > 1:  # the border does differ: the recomputation in FusionBlock is needed
        assert (out[..., 0, :] - ref[..., 0, :]).abs().max() > 1e-3


@pytest.mark.parametrize(("h", "w"), [(1, 2), (3, 3), (7, 10), (12, 5)])
def test_fusion_block_phase_conv_equals_the_direct_block(h, w):
    """fp32 inference of the last block's widths (64 + 4 → 32) by the phase form, border
    recomputed, against the direct block: equal up to Winograd's rounding."""
    block = FusionBlock(64 + 4, 32).eval()
    randomise_batchnorm(block)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    detail = torch.randn(2, 4, 2 * h, 2 * w, generator=g)
    with torch.inference_mode():
        assert block.uses_phase_conv(x, detail) and not block.conv.uses_winograd(x)
        out = block(x, detail)
        block.phase_conv = False
        ref = block(x, detail)
    assert out.shape == ref.shape == (2, 32, 2 * h, 2 * w)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_sides_that_are_not_borders_are_left_to_the_caller():
    """A side marked as not a border of the whole input (a band's cut) is not recomputed:
    only its outermost row/column can differ, which in_row_bands crops."""
    block = FusionBlock(64 + 4, 32).eval()
    randomise_batchnorm(block)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 64, 6, 8, generator=g)
    detail = torch.randn(1, 4, 12, 16, generator=g)
    with torch.inference_mode():
        ref = block(x, detail)
        cut = block(x, detail, (False, True, True, True))
    torch.testing.assert_close(cut[..., 1:, :], ref[..., 1:, :], atol=2e-5, rtol=0)
    assert (cut[..., 0, :] - ref[..., 0, :]).abs().max() > 1e-3


def test_only_the_last_block_of_the_decoder_runs_the_phase_form():
    """The wide blocks keep their Winograd conv at the output resolution (the phase form would
    take 4× the detail channels); bf16, autograd, many threads or winograd=False: direct."""
    dec = vitmatte_decoder()
    details = dec.convstream.conv_chans[::-1][:4]  # 192, 96, 48, 4
    assert [blk.phase_conv_eligible(d) for blk, d in zip(dec.fusion_blks, details)] == [False, False, False, True]
    last = dec.fusion_blks[-1]
    assert last.phase_conv_channels(4) == (80, 128)
    x, detail = torch.zeros(1, 64, 4, 4), torch.zeros(1, 4, 8, 8)
    with torch.inference_mode():
        assert last.uses_phase_conv(x, detail)
        assert not last.uses_phase_conv(x.bfloat16(), detail.bfloat16())
        torch.set_num_threads(3)
        assert not last.uses_phase_conv(x, detail)
        torch.set_num_threads(1)
        dec.winograd = False
        assert not last.uses_phase_conv(x, detail)
    dec.winograd = True
    assert not last.uses_phase_conv(x, detail)  # autograd on
    # the paper-faithful decoder keeps the original arithmetic
    faithful = DetailCapture(in_chans=384, lean_inference=False).eval()
    assert not faithful.fusion_blks[-1].phase_conv_eligible(4)


def test_decoder_counts_the_phase_weight_and_the_estimate_its_smaller_buffers():
    dec = vitmatte_decoder()
    assert dec.winograd_weight_elements() == 36 * (576 * 256 + 352 * 128 + 176 * 64 + 80 * 128)
    # the last stage holds a quarter-resolution 80-channel input, not the 64-channel upsampled
    # map plus the 68-channel concat at full resolution (without bands it is the peak)
    dec.band_pixels = None
    phase = decoder_tile_peak_bytes(dec, 512, 32, 384, 4, winograd=True)
    dec.fusion_blks[-1].phase_conv = False
    direct = decoder_tile_peak_bytes(dec, 512, 32, 384, 4, winograd=True)
    assert phase < direct


def test_decoder_with_the_phase_form_equals_the_direct_decoder_in_bands():
    """Several bands per stage (band cuts are not borders) and odd widths: the whole decoder
    with the phase form equals the direct decoder."""
    dec = vitmatte_decoder()
    dec.band_pixels, dec.min_band_rows = 512, 2
    features, images = decoder_inputs(1, 80, 112)
    with torch.inference_mode():
        fast = dec(features, images)
        dec.winograd = False
        dec.band_pixels = None
        ref = dec(features, images)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
