"""Tiled decoder inference: exact equality with the untiled decoder, context, validation, memory."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mematte.inference import (
    decode_tiled,
    decoder_context_radius,
    decoder_stride,
    decoder_tile_peak_bytes,
)
from mematte.models.decoder import DetailCapture

IN_CHANS = 32
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tensors are tiny: one intra-op thread is much faster than two on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_decoder(seed: int = 0, dtype: torch.dtype = torch.float32) -> DetailCapture:
    """Narrow decoder in eval mode with randomised BatchNorm statistics (so BN is not identity)."""
    torch.manual_seed(seed)
    dec = DetailCapture(in_chans=IN_CHANS, convstream_out=(8, 16, 24), fusion_out=(32, 16, 8, 8))
    with torch.no_grad():
        for m in dec.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return dec.to(dtype).eval()


def inputs(
    b: int, h: int, w: int, seed: int = 1, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 4, h, w, generator=g, dtype=dtype)
    features = torch.randn(b, IN_CHANS, h // 16, w // 16, generator=g, dtype=dtype)
    return features, images


@pytest.mark.parametrize(
    ("shape", "tile", "context"),
    [
        ((208, 176), 64, 64),  # 4×3 tiles, last row 16 px high, last column 48 px wide
        ((160, 288), 96, 32),  # non-square, context = minimal exact (32)
        ((112, 80), 16, 48),  # tiny tiles, context larger than the tile
    ],
)
def test_tiled_equals_untiled(shape: tuple[int, int], tile: int, context: int):
    dec = small_decoder()
    features, images = inputs(1, *shape)
    with torch.inference_mode():
        ref = dec(features, images)
        out = decode_tiled(dec, features, images, tile=tile, context=context)
    assert out.shape == ref.shape == (1, 1, *shape)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_batch_of_two():
    dec = small_decoder()
    features, images = inputs(2, 144, 112)
    with torch.inference_mode():
        ref = dec(features, images)
        out = decode_tiled(dec, features, images, tile=48, context=64)
    assert out.shape == (2, 1, 144, 112)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    # each sample is decoded independently of the other
    with torch.inference_mode():
        one = decode_tiled(dec, features[1:], images[1:], tile=48, context=64)
    torch.testing.assert_close(out[1:], one, atol=ATOL, rtol=0)


def test_context_matters():
    """16 px < the 31 px receptive-field radius: tile seams are measurably wrong."""
    dec = small_decoder()
    features, images = inputs(1, 208, 176)
    with torch.inference_mode():
        ref = dec(features, images)
        short = decode_tiled(dec, features, images, tile=64, context=16)
        enough = decode_tiled(dec, features, images, tile=64, context=32)
    assert (short - ref).abs().max().item() > 10 * ATOL
    torch.testing.assert_close(enough, ref, atol=ATOL, rtol=0)


def test_receptive_field_radius_is_exact():
    """In float64 exactly ``decoder_context_radius`` (31) pixels next to an interior window
    border differ from the untiled result, on every side."""
    radius = decoder_context_radius(small_decoder())
    assert radius == 31
    assert decoder_context_radius(DetailCapture(in_chans=8)) == 31
    dec = small_decoder(dtype=torch.float64)
    features, images = inputs(1, 256, 256, dtype=torch.float64)
    a, b = 64, 192  # interior window, aligned to 16
    with torch.no_grad():
        ref = dec(features, images)[0, 0, a:b, a:b]
        win = dec(features[..., a // 16 : b // 16, a // 16 : b // 16], images[..., a:b, a:b])[0, 0]
    wrong = (win - ref).abs() > 1e-12
    inner = slice(radius + 8, -(radius + 8))  # away from the perpendicular borders
    cols, rows = wrong[inner].any(0), wrong[:, inner].any(1)
    for v in (cols, rows):
        assert v[:radius].all() and v[-radius:].all()
        assert not v[radius:-radius].any()


def test_windows_are_bounded_and_aligned(monkeypatch: pytest.MonkeyPatch):
    dec = small_decoder()
    features, images = inputs(1, 208, 176)
    calls: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, int, int, int]]] = []
    forward = dec.forward

    def spy(f: Tensor, x: Tensor, region: tuple[int, int, int, int]) -> Tensor:
        calls.append((tuple(f.shape[-2:]), tuple(x.shape[-2:]), region))
        return forward(f, x, region=region)

    monkeypatch.setattr(dec, "forward", spy)
    with torch.inference_mode():
        decode_tiled(dec, features, images, tile=64, context=32)
    assert len(calls) == 4 * 3
    for (fh, fw), (h, w), (r0, r1, c0, c1) in calls:
        assert h <= 64 + 2 * 32 and w <= 64 + 2 * 32
        assert h % 16 == 0 and w % 16 == 0 and (fh, fw) == (h // 16, w // 16)
        # the tile inside its window: up to 32 px of context on every side (less at the border)
        assert r1 - r0 <= 64 and c1 - c0 <= 64 and r0 in (0, 32) and c0 in (0, 32)
        assert 0 <= h - r1 <= 32 and 0 <= w - c1 <= 32
    # the largest windows first (later ones fit in memory the allocator already holds); the
    # last is the bottom-right corner's 48×80
    areas = [h * w for _, (h, w), _ in calls]
    assert areas == sorted(areas, reverse=True) and areas[0] == 128 * 128 and areas[-1] == 48 * 80


def test_single_tile_fast_path(monkeypatch: pytest.MonkeyPatch):
    dec = small_decoder()
    features, images = inputs(1, 96, 64)
    calls = []
    forward = dec.forward
    monkeypatch.setattr(dec, "forward", lambda f, x: calls.append(x.shape) or forward(f, x))
    with torch.inference_mode():
        ref = forward(features, images)
        out = decode_tiled(dec, features, images, tile=96, context=64)
    assert calls == [images.shape]  # one call on the whole image
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"tile": 0}, "tile"),
        ({"tile": -16}, "tile"),
        ({"tile": 100}, "tile"),
        ({"tile": 64.0}, "tile"),
        ({"context": 8}, "context"),
        ({"context": -32}, "context"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str):
    dec = small_decoder()
    features, images = inputs(1, 64, 64)
    with pytest.raises(ValueError, match=rf"{name}=.*multiple of 16"):
        decode_tiled(dec, features, images, **kwargs)


def test_bad_inputs_and_training_mode():
    dec = small_decoder()
    features, images = inputs(1, 64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        decode_tiled(dec, features, images[..., :56])
    with pytest.raises(ValueError, match="do not match"):
        decode_tiled(dec, features[..., :2], images)
    with pytest.raises(ValueError, match=r"decoder\.eval\(\)"):
        decode_tiled(dec.train(), features, images)


def test_tile_peak_bytes():
    dec = DetailCapture(in_chans=384)  # the ViTMatte-S widths
    assert decoder_stride(dec) == 16
    est = [decoder_tile_peak_bytes(dec, t, 64, 384) for t in (256, 512, 1024)]
    assert est[0] < est[1] < est[2]
    assert decoder_tile_peak_bytes(dec, 512, 32, 384) < est[1] < decoder_tile_peak_bytes(dec, 512, 96, 384)
    assert decoder_tile_peak_bytes(dec, 512, 64, 384, dtype_bytes=2) * 2 == est[1]
    # the original code's decoder: at least the full-resolution concat (64 + 4 channels) and
    # fusion output + BN copy (2 × 32)
    side = 512 + 2 * 64
    original = decoder_tile_peak_bytes(DetailCapture(in_chans=384, lean_inference=False), 512, 64, 384)
    assert original >= (64 + 4 + 2 * 32) * side * side * 4
    # and of the order of the whole window's activations, not of some larger image
    assert original < 400 * side * side * 4
    # in bands with BatchNorm folded: the half-resolution stage buffers dominate instead
    assert (64 + 48 + 4) * side * side // 4 * 4 < est[1] < original / 2
