"""Winograd F(4×4, 3×3) convolutions of the decoder (fp32 CPU inference) and the decoder's
region pass (the fine stages computed for a tile only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mematte.inference import decode_tiled, decoder_tile_peak_bytes, estimate_peak_bytes
from mematte.models.decoder import ConvBNReLU, DetailCapture, FusionBlock, in_row_bands
from mematte.models.winograd import (
    MAX_THREADS,
    conv3x3_winograd,
    winograd_applies,
    winograd_weight,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Winograd runs on few intra-op threads only: the tests pin one, whatever the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so folding them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize(
    ("shape", "c_out"),
    [((1, 8, 12, 16), 5), ((2, 6, 9, 7), 4), ((1, 3, 1, 1), 2), ((1, 5, 5, 13), 3)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_is_the_convolution_in_float64(shape, c_out, channels_last):
    """In float64 the algorithm's rounding vanishes: equal to F.conv2d to 1e-12, any size
    (partial last tiles), batch and layout."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, shape[1], 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    for b, relu in ((None, False), (bias, True)):
        ref = F.conv2d(x, weight, b, 1, 1)
        if relu:
            ref = ref.relu()
        out = conv3x3_winograd(x, winograd_weight(weight), b, relu=relu, chunk_bytes=2048)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("c_in", "c_out", "h", "w"), [(576, 256, 10, 14), (176, 64, 21, 18)])
def test_winograd_fp32_rounding_stays_small(c_in, c_out, h, w):
    """fp32 at the decoder's widths: within 2e-5 of the float64 result relative to the
    output's magnitude (a direct fp32 convolution is within about 3e-6)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, c_in, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g) / (3 * c_in**0.5)
    ref = F.conv2d(x.double(), weight.double(), None, 1, 1)
    with torch.inference_mode():
        out = conv3x3_winograd(x, winograd_weight(weight))
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err < 2e-5, err


def test_winograd_applies_only_to_fp32_cpu_inference_of_wide_3x3_convs():
    wide = nn.Conv2d(128, 128, 3, padding=1)
    x = torch.zeros(1, 128, 8, 8)
    with torch.inference_mode():
        assert winograd_applies(x, wide)
        assert not winograd_applies(x.bfloat16(), wide)
        assert not winograd_applies(x, nn.Conv2d(128, 128, 3, stride=2, padding=1))
        assert not winograd_applies(x, nn.Conv2d(128, 128, 1))
        assert not winograd_applies(x, nn.Conv2d(128, 128, 3, padding=1, groups=2))
        assert not winograd_applies(x[:, :32], nn.Conv2d(32, 32, 3, padding=1))  # too narrow
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd_applies(x, wide)
        torch.set_num_threads(MAX_THREADS + 1)  # many threads: the direct conv scales better
        assert not winograd_applies(x, wide)
        torch.set_num_threads(1)
    assert not winograd_applies(x, wide)  # autograd on: training


def test_conv_bn_relu_caches_the_transformed_weight_until_it_changes():
    block = ConvBNReLU(96, 128, stride=1).eval()
    randomise_batchnorm(block)
    x = torch.randn(1, 96, 12, 20).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert block.uses_winograd(x)
        out = block(x)
        cached = block.__dict__["_winograd_cache"][1]
        assert block(x) is not None and block.__dict__["_winograd_cache"][1] is cached
        block.winograd = False
        direct = block(x)
    torch.testing.assert_close(out, direct, atol=1e-4, rtol=1e-4)
    block.winograd = True
    with torch.no_grad():  # an optimiser step or load_state_dict: an in-place update
        block.conv.weight.mul_(2)
        block.bn.running_mean.add_(0.5)
    with torch.inference_mode():
        updated = block(x)
        assert block.__dict__["_winograd_cache"][1] is not cached
        block.winograd = False
        torch.testing.assert_close(updated, block(x), atol=1e-4, rtol=1e-4)


def test_a_module_built_under_inference_mode_runs_winograd():
    """Inference tensors keep no version counter: the cache must not need one."""
    with torch.inference_mode():
        block = ConvBNReLU(96, 128, stride=1).eval()
        x = torch.randn(1, 96, 8, 8)
        out = block(x)
        assert "_winograd_cache" in block.__dict__
        block.winograd = False
        torch.testing.assert_close(out, block(x), atol=1e-4, rtol=1e-4)


def test_fusion_block_writes_its_concat_into_the_winograd_input():
    fusion = FusionBlock(96 + 48, 64).eval()
    randomise_batchnorm(fusion)
    x = torch.randn(2, 96, 9, 11).contiguous(memory_format=torch.channels_last)
    detail = torch.randn(2, 48, 18, 22).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fusion.conv.uses_winograd(x)
        out = fusion(x, detail)
        fusion.conv.winograd = False
        ref = fusion(x, detail)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def vitmatte_decoder() -> DetailCapture:
    """ViTMatte-S's decoder widths: the 576→256, 352→128 and 176→64 convs are Winograd."""
    dec = DetailCapture(in_chans=384).eval()
    randomise_batchnorm(dec)
    return dec


def decoder_inputs(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(b, 384, h // 16, w // 16, generator=g)
    images = torch.randn(b, 4, h, w, generator=g)
    return (features.contiguous(memory_format=torch.channels_last),
            images.contiguous(memory_format=torch.channels_last))


def test_decoder_with_winograd_matches_the_direct_decoder():
    dec = vitmatte_decoder()
    # the three wide convs, and the last block's conv in the phase form (80 → 128)
    assert dec.winograd and dec.winograd_weight_elements() == 36 * (576 * 256 + 352 * 128 + 176 * 64 + 80 * 128)
    features, images = decoder_inputs(1, 96, 128)
    with torch.inference_mode():
        fast = dec(features, images)
        dec.winograd = False
        assert dec.winograd_weight_elements() == 0
        ref = dec(features, images)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("region", [(0, 64, 0, 128), (16, 48, 40, 96), (56, 96, 0, 8), (8, 16, 120, 128)])
def test_decoder_region_equals_the_crop_of_the_whole_output(region):
    """The fine stages computed for a region only give that crop of the whole output: any
    halo too small (rows or columns, inside or at the border) would change border pixels."""
    dec = vitmatte_decoder()
    dec.band_pixels, dec.min_band_rows = 1024, 2  # several bands per stage
    features, images = decoder_inputs(2, 96, 128)
    r0, r1, c0, c1 = region
    with torch.inference_mode():
        whole = dec(features, images)
        part = dec(features, images, region=region)
    assert part.shape == (2, 1, r1 - r0, c1 - c0)
    torch.testing.assert_close(part, whole[..., r0:r1, c0:c1], atol=1e-6, rtol=0)


def test_a_whole_region_is_the_plain_pass(monkeypatch: pytest.MonkeyPatch):
    """A tile without context (the official code's 512² patches) keeps the plain pass: no
    region slicing, so the paper-faithful decoder allocates what the original code does."""
    dec = vitmatte_decoder()
    dec.band_pixels = None
    features, images = decoder_inputs(1, 64, 96)
    seen = []
    monkeypatch.setattr("mematte.models.decoder.in_row_bands",
                        lambda stage, x, detail, band, region=None, origin=(0, 0): seen.append(region) or stage(x, detail))
    with torch.inference_mode():
        dec(features, images, region=(0, 64, 0, 96))
    assert seen == [None] * 4


def test_decoder_region_must_be_aligned_and_inside():
    dec = vitmatte_decoder()
    features, images = decoder_inputs(1, 64, 64)
    with torch.inference_mode(), pytest.raises(ValueError, match="multiples of 8"):
        dec(features, images, region=(4, 36, 0, 64))
    with torch.inference_mode(), pytest.raises(ValueError, match="inside"):
        in_row_bands(lambda x, d: d, images[:, :1, :32, :32], images, None, region=(0, 96, 0, 64))
    with torch.inference_mode(), pytest.raises(ValueError, match="does not cover"):
        in_row_bands(lambda x, d: d, images[:, :1, :8, :8], images, None, region=(16, 48, 16, 48),
                     x_origin=(8, 8))


def test_tiled_decoder_with_winograd_and_regions_equals_the_whole_pass():
    """decode_tiled (tiles computed as regions of their windows, Winograd convs) against one
    direct pass over the whole image: the tiling stays exact."""
    dec = vitmatte_decoder()
    features, images = decoder_inputs(1, 160, 224)
    with torch.inference_mode():
        tiled = decode_tiled(dec, features, images, tile=64, context=32)
        dec.winograd = False
        dec.band_pixels = None
        whole = dec(features, images)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_estimate_counts_the_winograd_buffers_and_weights():
    dec = vitmatte_decoder()
    with_w = decoder_tile_peak_bytes(dec, 512, 32, 384, 4, winograd=True)
    without = decoder_tile_peak_bytes(dec, 512, 32, 384, 4, winograd=False)
    assert with_w > without
    from mematte.models.matting_net import MattingNet
    from mematte.models.vit import ViT

    net = MattingNet(ViT(embed_dim=384, depth=2, num_heads=6, global_block_indexes=(1,),
                         residual_block_indexes=()), dec).eval()
    cpu = estimate_peak_bytes(net, 1024, 1024, tile=512, device_type="cpu")
    cuda = estimate_peak_bytes(net, 1024, 1024, tile=512, device_type="cuda")
    assert cpu["decoder"] - cuda["decoder"] >= 4 * dec.winograd_weight_elements()
