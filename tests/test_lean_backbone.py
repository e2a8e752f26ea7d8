"""Lean inference of the backbone is exact: the in-place, banded paths taken without autograd
(``Block.forward_lean``: window attention in bands of window rows, the MLP in token chunks
with GELU in place, the conv residual in row bands; ``ConvTokenRefiner.forward_in_bands``;
the LayerNorm on the routed tokens only; the patch embedding of a ``LazyInput`` in strips)
give what the plain layer-by-layer pass gives with autograd on."""

from __future__ import annotations

import functools

import pytest
import torch

from mematte.models.decoder import DetailCapture
from mematte.models.ltrm import ConvTokenRefiner
from mematte.models.matting_net import MattingNet
from mematte.models.router import LocalGlobalRouter
from mematte.models.routed_block import RoutedBlock
from mematte.models.vit import ResBottleneck, ViT


def backbone(routed: bool, chunk_tokens: int | None) -> ViT:
    torch.manual_seed(0)
    block = (functools.partial(RoutedBlock, router=LocalGlobalRouter, ltrm=ConvTokenRefiner,
                               selection="topk", keep_ratio=0.3) if routed else None)
    vit = ViT(embed_dim=48, depth=4, num_heads=3, window_size=4, global_block_indexes=(1, 3),
              residual_block_indexes=(0, 1, 3), rel_pos_grid=8, global_block=block, chunk_tokens=chunk_tokens)
    for name, p in vit.named_parameters():  # the residual blocks start as identity: make them act
        if "residual" in name and "norm3" in name:
            torch.nn.init.normal_(p)
    return vit.eval()


@pytest.mark.parametrize("routed", [False, True])
@pytest.mark.parametrize("chunk_tokens", [None, 40, 7])  # everything at once; bands; one row at a time
@pytest.mark.parametrize("size", [(64, 64), (80, 144), (112, 48)])  # grids 4×4, 5×9 (padded windows), 7×3
def test_lean_backbone_equals_the_plain_pass(routed, chunk_tokens, size):
    vit = backbone(routed, chunk_tokens)
    x = torch.randn(2, 4, *size)
    with torch.enable_grad():  # the plain path: every layer once, out of place
        plain = vit(x)
    with torch.inference_mode():
        lean = vit(x.clone())
    torch.testing.assert_close(lean.features, plain.features.detach(), rtol=1e-5, atol=1e-5)
    for a, b in zip(lean.routing, plain.routing):
        assert torch.equal(a.decision, b.decision)


@pytest.mark.parametrize("routed", [False, True])
def test_lazy_input_crops_are_slices_of_the_full_input(routed):
    torch.manual_seed(0)
    net = MattingNet(backbone(routed, 40), DetailCapture(in_chans=48, convstream_out=(8, 16, 24),
                                                        fusion_out=(32, 16, 8, 8))).eval()
    image = torch.randint(0, 256, (1, 3, 70, 90), dtype=torch.uint8)
    trimap = torch.randint(0, 3, (1, 1, 70, 90)).float() / 2
    # the network input by its definition: normalised RGB, the trimap, zeros to 96×96
    rgb = (image.float() / 255 - net.pixel_mean) / net.pixel_std
    full = torch.nn.functional.pad(torch.cat([rgb, trimap], dim=1), (0, 6, 0, 26))
    torch.testing.assert_close(net.prepare_inputs(image.float() / 255, trimap), full, rtol=0, atol=0)
    lazy = net.lazy_inputs(image, trimap)
    assert tuple(lazy.shape) == tuple(full.shape)
    for y0, y1, x0, x1 in [(0, 16, 0, 96), (48, 80, 32, 96), (64, 80, 80, 96), (0, 80, 0, 96)]:
        torch.testing.assert_close(lazy.crop(y0, y1, x0, x1), full[:, :, y0:y1, x0:x1], rtol=0, atol=0)
    with torch.inference_mode():  # strips of the lazy input embed as the whole input does
        torch.testing.assert_close(net.backbone(lazy).features, net.backbone(full).features, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="differ in size"):
        net.lazy_inputs(image, trimap[..., :80])


@pytest.mark.parametrize("eca_shortcut", [True, False])
def test_conv_token_refiner_gradients_float64(eca_shortcut):
    """The conv LTRM's training pass (GELUs out of place under autograd) has exact gradients,
    and its banded inference pass gives the same values."""
    torch.manual_seed(0)
    ltrm = ConvTokenRefiner(6, kernel_size=3, eca_kernel=3, eca_shortcut=eca_shortcut).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ltrm, (x,), eps=1e-6, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ltrm.forward_in_bands(x, 2), ltrm(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("winograd", [True, False])
@pytest.mark.parametrize("band_rows", [1, 3, 4, 8, 100])
def test_residual_in_bands_equals_the_block(winograd, band_rows, monkeypatch):
    """The conv residual's inference pass (bands in token layout, each row through conv1
    once, the 3×3 conv by Winograd in fp32 on a CPU) equals ``x + branch(x)``: rows cut
    between bands read their neighbours, the grid's border rows the zero padding."""
    torch.manual_seed(0)
    blk = ResBottleneck(256).eval()  # 128 → 128: wide enough for Winograd
    blk.winograd = winograd
    for p in blk.norm3.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 11, 13, 256)
    with torch.enable_grad():
        ref = blk(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach()
    calls = []
    original = ResBottleneck._conv2_rows

    def record(self, above, mid, below, use_winograd):
        calls.append((mid.shape[1], use_winograd))
        return original(self, above, mid, below, use_winograd)

    monkeypatch.setattr(ResBottleneck, "_conv2_rows", record)
    with torch.inference_mode():
        out = blk.add_into(x.clone(), band_rows)
    # Winograd: a few times a direct convolution's rounding (measured 7e-5 on outputs up to 11)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-4 if winograd else 2e-5)
    if band_rows >= 11:  # one band: the branch as defined, as the original code
        assert calls == []
        return
    rows = 4 * -(-band_rows // 4) if winograd else band_rows
    assert [r for r, _ in calls] == [min(rows, 11 - r0) for r0 in range(0, 11, rows)]
    assert all(w == winograd for _, w in calls)
