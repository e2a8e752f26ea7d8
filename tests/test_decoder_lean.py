"""The decoder's lean inference (BatchNorm folded, fusion stages in row bands) equals the plain pass."""

from __future__ import annotations

import pytest
import torch

from mematte.inference import decode_tiled, decoder_tile_peak_bytes
from mematte.models.decoder import DetailCapture, fold_batchnorm, in_row_bands


def random_decoder(**kw) -> DetailCapture:
    """A small decoder with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    dec = DetailCapture(in_chans=32, convstream_out=(8, 16, 24), fusion_out=(32, 16, 8, 8), **kw)
    for m in dec.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return dec.eval()


@pytest.mark.parametrize("band_pixels", [None, 1, 500, 3000, 10**7])
@pytest.mark.parametrize("size", [(144, 112), (80, 208)])
def test_lean_inference_equals_the_plain_pass(band_pixels, size):
    dec = random_decoder(band_pixels=band_pixels, min_band_rows=2)  # many bands on small images
    features = torch.randn(1, 32, size[0] // 16, size[1] // 16)
    images = torch.randn(1, 4, *size)
    plain = dec(features, images)  # autograd on: the unfolded, unbanded modules
    with torch.inference_mode():
        lean = dec(features, images)
    torch.testing.assert_close(lean, plain, atol=1e-5, rtol=1e-5)


def test_bands_cover_every_row_once_with_context():
    calls, sides = [], []

    def stage(x, detail, edges=(True,) * 4):  # ×2 nearest upsample + detail; records its input
        calls.append(x.shape[-2])
        sides.append(edges)
        return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) + detail

    x, detail = torch.randn(1, 2, 10, 3), torch.randn(1, 2, 20, 6)
    out = in_row_bands(stage, x, detail, band_rows=4)
    torch.testing.assert_close(out, stage(x, detail))
    assert len(calls) == 1 + 5 and max(calls[:-1]) <= 2 + 2 * 3  # 2 rows per band + halo
    # which sides of each band are borders of the whole input: the top two bands reach row 0
    # (halo clipped), the bottom two the last row; the columns are whole
    top, bottom = (True, False, True, True), (False, True, True, True)
    assert sides[:-1] == [top, top, (False, False, True, True), bottom, bottom]


def test_fold_batchnorm_is_conv_then_bn():
    dec = random_decoder()
    block = dec.fusion_blks[0].conv
    weight, bias = fold_batchnorm(block.conv, block.bn)
    x = torch.randn(2, block.conv.in_channels, 6, 5)
    ref = block.bn(block.conv(x))
    torch.testing.assert_close(torch.nn.functional.conv2d(x, weight, bias, padding=1), ref, atol=1e-5, rtol=1e-5)


def test_the_original_decoder_stays_available_and_official_patches_are_context_zero():
    original, lean = random_decoder(lean_inference=False), random_decoder()
    assert original.band_pixels is None and not original.matting_head.fold_bn
    assert decoder_tile_peak_bytes(lean, 512, 64, 384) < decoder_tile_peak_bytes(original, 512, 64, 384) / 2
    features, images = torch.randn(1, 32, 8, 8), torch.randn(1, 4, 128, 128)
    with torch.inference_mode():
        patches = decode_tiled(original, features, images, tile=64, context=0)
        # each 64² patch is decoded on its own, zero-padded at its borders (the official code)
        corner = original(features[..., :4, :4], images[..., :64, :64])
        exact = decode_tiled(lean, features, images, tile=64, context=32)
        whole = lean(features, images)
    torch.testing.assert_close(patches[..., :64, :64], corner)
    torch.testing.assert_close(exact, whole, atol=1e-5, rtol=1e-5)
    assert (patches - whole).abs().max() > 1e-4  # inexact along the patch borders


def test_predictor_picks_its_tile_from_the_budget():
    from mematte.inference import AUTO_MIN_TILE, AUTO_TILES, Predictor, estimate_peak_bytes
    from mematte.models.matting_net import MattingNet
    from mematte.models.vit import ViT

    net = MattingNet(ViT(embed_dim=96, num_heads=3), DetailCapture(in_chans=96, convstream_out=(8, 16, 32),
                                                                   fusion_out=(32, 16, 8, 8)))
    size = (3000, 2000)
    free = Predictor(net, tile="auto")
    assert free.choose_tile(*size) >= AUTO_MIN_TILE
    # a budget between the smallest and the largest tile's estimate: the largest tile that fits
    totals = {t: estimate_peak_bytes(net, *size, tile=t)["total"] for t in AUTO_TILES}
    budget = (totals[384] + totals[512]) / 2
    tight = Predictor(net, tile="auto", memory_budget_gb=budget / 1024**3)
    assert tight.choose_tile(*size) == max(t for t in AUTO_TILES if totals[t] <= budget)
    assert tight.estimate(*size)["total"] <= budget
    assert Predictor(net, tile="auto", memory_budget_gb=1e-3).choose_tile(*size) == AUTO_TILES[-1]
    assert Predictor(net, tile=256).choose_tile(*size) == 256


def test_bands_are_at_least_min_band_rows_high():
    """A band recomputes 8 output rows of context; a wide stage still gets 64-row bands (the
    estimate sizes them the same way), and min_band_rows=2 gives back the pixel rule."""
    from mematte.models.decoder import MIN_BAND_ROWS, band_rows

    assert band_rows(None, 512) is None
    assert band_rows(16384, 520) == MIN_BAND_ROWS == 64  # 31 rows by pixels alone
    assert band_rows(16384, 128) == 128
    assert band_rows(16384, 520, min_rows=2) == 30
    dec = random_decoder()
    seen = []
    stage = dec._last_fusion_and_head

    def record(x, detail, edges):
        seen.append(detail.shape[-2])
        return stage(x, detail, edges)

    dec._last_fusion_and_head = record
    features, images = torch.randn(1, 32, 16, 32), torch.randn(1, 4, 256, 512)
    with torch.inference_mode():
        dec(features, images)
    # 256 output rows in 64-row bands: 4 calls of at most 64 + 8 context rows
    assert len(seen) == 4 and max(seen) <= 64 + 8
    # the ViTMatte-S decoder on a 2048-px tile: its last stage's 64-row band is the peak
    full = DetailCapture()
    tall = decoder_tile_peak_bytes(full, 2048, 32, 384, winograd=True)
    full.min_band_rows = 2
    assert decoder_tile_peak_bytes(full, 2048, 32, 384, winograd=True) < tall
