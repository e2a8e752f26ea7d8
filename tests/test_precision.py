"""bf16 on CPU: the capability check, the accuracy guard, its cache and ``precision=auto``."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mematte import precision
from mematte.inference import Predictor, decode_tiled
from mematte.models.attention import get_rel_pos, rel_pos_mask
from mematte.models.decoder import DetailCapture
from mematte.models.ltrm import ConvTokenRefiner
from mematte.models.matting_net import MattingNet
from mematte.models.routed_block import RoutedBlock
from mematte.models.router import LocalGlobalRouter
from mematte.models.vit import ViT
from mematte.presets import encode_trimap, finish_alpha

SMALL = precision.GuardSettings(num_images=2, min_size=64, max_size=96)


def small_net(routed: bool = True) -> MattingNet:
    torch.manual_seed(0)
    block = functools.partial(RoutedBlock, router=LocalGlobalRouter, ltrm=ConvTokenRefiner) if routed else None
    backbone = ViT(embed_dim=48, depth=4, num_heads=3, window_size=4, global_block_indexes=(1, 3),
                   residual_block_indexes=(1, 3), rel_pos_grid=8, global_block=block)
    decoder = DetailCapture(in_chans=48, convstream_out=(8, 16, 24), fusion_out=(32, 16, 8, 8))
    for m in decoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return MattingNet(backbone, decoder).eval()


def bf16_sensitive(net: MattingNet) -> MattingNet:
    """A net whose alpha moves under bf16 only: the head's logits shift when they are bf16."""
    net.decoder.matting_head.register_forward_hook(
        lambda module, args, out: out + 2.0 if out.dtype == torch.bfloat16 else out)
    return net


@pytest.fixture
def guard_env(monkeypatch, tmp_path):
    """A capable CPU, an empty cache in tmp_path, small guard settings, guard runs counted."""
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "DEFAULT_SETTINGS", SMALL)
    calls = []
    real = precision.run_guard

    def counted(predictor, settings=None):
        calls.append(settings)
        return real(predictor, settings)

    monkeypatch.setattr(precision, "run_guard", counted)
    return calls


def _no_guard(*args, **kwargs):
    raise AssertionError("the guard must not run here")


# --------------------------------------------------------------------------- capability
def test_cpu_bf16_needs_a_native_flag(monkeypatch):
    monkeypatch.setattr(precision, "_mkldnn_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not precision.cpu_bf16_supported()
    for flag in precision.BF16_CPU_FLAGS:
        monkeypatch.setattr(precision, "cpu_flags", lambda flag=flag: frozenset({"avx512f", flag}))
        assert precision.cpu_bf16_supported()
    monkeypatch.setattr(precision, "_mkldnn_bf16", lambda: False)
    assert not precision.cpu_bf16_supported()


def test_cpu_flags_reads_proc_cpuinfo():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux
        assert any(f.startswith(("fpu", "sse", "avx", "fp", "asimd")) for f in flags)


# --------------------------------------------------------------------------- guard
def test_guard_passes_where_bf16_is_fine():
    result = precision.run_guard(Predictor(small_net(), tile=64, context=64), SMALL)
    assert result.passed, result.summary()
    assert set(result.fp32) == set(result.bf16) == set(precision.GUARD_METRICS)
    assert all(0 <= result.rel_diff[k] <= 0.01 for k in precision.GUARD_METRICS)
    assert 0 < result.max_abs_alpha_diff < 0.05 and result.images == 2
    assert all(64 <= s <= 96 for size in result.sizes for s in size)
    assert "PASS" in result.summary() and "max|Δα|" in result.summary()


def test_guard_fails_on_a_bf16_sensitive_net():
    result = precision.run_guard(Predictor(bf16_sensitive(small_net()), tile=64, context=64), SMALL)
    assert not result.passed
    assert max(result.rel_diff.values()) > 0.01 and result.max_abs_alpha_diff > 0.1
    assert "FAIL" in result.summary()


def test_guard_threshold_zero_fails_where_anything_moves():
    strict = precision.GuardSettings(num_images=2, min_size=64, max_size=96, rtol=0.0)
    result = precision.run_guard(Predictor(small_net(), tile=64, context=64), strict)
    assert result.passed == all(v == 0 for v in result.rel_diff.values())


def test_guard_leaves_the_predictor_as_it_was():
    predictor = Predictor(small_net(), precision="auto", tile=64, context=64, memory_budget_gb=4)
    precision.run_guard(predictor, SMALL)
    assert predictor.precision == "auto" and predictor.memory_budget_gb == 4 and not predictor._cpu_auto_resolved


def test_relative_difference():
    assert precision._relative(0.0, 0.0) == 0.0
    assert precision._relative(0.0, 1e-9) == math.inf
    assert precision._relative(2.0, 2.02) == pytest.approx(0.01)
    assert precision._relative(2.0, 2.02, atol=0.05) == 0.0


# --------------------------------------------------------------------------- auto and the cache
def test_auto_runs_the_guard_once_per_weights(guard_env, tmp_path):
    net = small_net()
    first = Predictor(net, tile=64, context=64)
    assert first.autocast_dtype == torch.bfloat16 and len(guard_env) == 1
    assert first.guard is not None and first.guard.passed and not first.guard.cached
    files = list((tmp_path / "precision").glob("*.json"))
    assert [f.stem for f in files] == [first.guard.key]
    first.autocast_dtype  # resolved once per predictor
    assert len(guard_env) == 1

    second = Predictor(net, tile=64, context=64)  # same weights: the cached verdict
    assert second.autocast_dtype == torch.bfloat16 and len(guard_env) == 1
    assert second.guard.cached and second.guard.key == first.guard.key
    assert second.guard.fp32 == first.guard.fp32 and second.guard.max_abs_alpha_diff == first.guard.max_abs_alpha_diff

    with torch.no_grad():  # other weights: another key, the guard runs again
        net.decoder.matting_head.matting_convs[3].bias.add_(0.01)
    third = Predictor(net, tile=64, context=64)
    assert third.autocast_dtype == torch.bfloat16 and len(guard_env) == 2
    assert third.guard.key != first.guard.key and len(list((tmp_path / "precision").glob("*.json"))) == 2
    assert not list((tmp_path / "precision").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_auto_picks_fp32_when_the_guard_fails(guard_env):
    predictor = Predictor(bf16_sensitive(small_net()), tile=64, context=64)
    assert predictor.autocast_dtype is None and not predictor.guard.passed and len(guard_env) == 1
    assert Predictor(predictor.net, tile=64, context=64).autocast_dtype is None  # cached failure
    assert len(guard_env) == 1


def test_cache_key_follows_settings_and_machine(guard_env, monkeypatch):
    predictor = Predictor(small_net(), tile=64, context=64)
    key = precision.guard_key(predictor, SMALL)
    assert key == precision.guard_key(Predictor(small_net(), tile=64, context=64), SMALL)
    assert key != precision.guard_key(predictor, precision.GuardSettings(num_images=3))
    assert key != precision.guard_key(Predictor(small_net(), tile=128, context=64), SMALL)
    monkeypatch.setattr(precision, "_cpu_signature", lambda: "another cpu")
    assert key != precision.guard_key(predictor, SMALL)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert key != precision.guard_key(predictor, SMALL)


def test_unreadable_cache_entry_reruns_the_guard(guard_env, tmp_path):
    net = small_net()
    first = Predictor(net, tile=64, context=64)
    assert first.resolve_cpu_auto() == torch.bfloat16 and len(guard_env) == 1
    key = first.guard.key
    (tmp_path / "precision" / f"{key}.json").write_text("{not json")
    predictor = Predictor(net, tile=64, context=64)
    assert predictor.autocast_dtype == torch.bfloat16 and len(guard_env) == 2 and not predictor.guard.cached


def test_auto_on_a_cpu_without_bf16_is_fp32(monkeypatch):
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    monkeypatch.setattr(precision, "run_guard", _no_guard)
    predictor = Predictor(small_net(), tile=64, context=64)
    assert predictor.autocast_dtype is None and predictor.guard is None


def test_explicit_precisions_skip_the_guard(monkeypatch):
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "run_guard", _no_guard)
    net = small_net()
    image, trimap = torch.rand(3, 70, 90), torch.randint(0, 3, (70, 90), dtype=torch.uint8) * 127
    bf16 = Predictor(net, precision="bf16", tile=64, context=64)
    assert bf16.autocast_dtype == torch.bfloat16
    assert bf16(image, trimap).alpha.dtype == torch.float32
    fp32 = Predictor(net, precision="fp32", tile=64, context=64)
    assert fp32.autocast_dtype is None and fp32.guard is None and bf16.guard is None


def test_forced_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    """precision=bf16 still runs where the CPU would emulate it, but says what it costs."""
    net = small_net()
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    with caplog.at_level("WARNING", logger="mematte"):
        assert Predictor(net, precision="bf16", tile=64, context=64).autocast_dtype == torch.bfloat16
    assert "without native bf16" in caplog.text and "precision=auto or fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    with caplog.at_level("WARNING", logger="mematte"):
        Predictor(net, precision="bf16", tile=64, context=64)
        Predictor(net, precision="fp32", tile=64, context=64)
    assert "native bf16" not in caplog.text


@pytest.mark.parametrize(("value", "dtype"), [("0", None), ("1", torch.bfloat16)])
def test_environment_switch(monkeypatch, value, dtype):
    monkeypatch.setenv(precision.AUTO_ENV, value)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "run_guard", _no_guard)
    assert Predictor(small_net(), tile=64, context=64).autocast_dtype == dtype


# --------------------------------------------------------------------------- speed changes are exact
@pytest.mark.parametrize("tile", [None, 64])
def test_channels_last_bf16_decoder_equals_the_plain_autocast_one(tile):
    """The Predictor's CPU bf16 path (channels-last decoder, bf16 input) = plain autocast."""
    net = small_net()
    image, trimap_u8 = torch.rand(1, 3, 100, 140), torch.randint(0, 3, (1, 1, 100, 140), dtype=torch.uint8) * 127
    predictor = Predictor(net, precision="bf16", tile=tile, context=32)
    got = predictor(image, trimap_u8)
    trimap = encode_trimap(trimap_u8, predictor.rules.trimap_encoding)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = net.prepare_inputs(image, trimap, predictor.rules.padding)
        out = net.backbone(x)
        alpha = net.decoder(out.features, x) if tile is None else decode_tiled(net.decoder, out.features, x, tile, 32)
    expected = finish_alpha(alpha[..., :100, :140], trimap, predictor.rules)
    assert torch.equal(got.alpha, expected)


def test_window_rel_pos_mask_bf16_matmul_path_is_exact():
    torch.manual_seed(0)
    for h, w, rows in [(14, 14, (0, 14)), (14, 14, (3, 8)), (7, 9, (0, 7))]:
        q = torch.randn(6, (rows[1] - rows[0]) * w, 32).bfloat16()
        r_h = get_rel_pos(h, h, torch.randn(2 * h - 1, 32)).bfloat16()
        r_w = get_rel_pos(w, w, torch.randn(2 * w - 1, 32)).bfloat16()
        expected = rel_pos_mask(q, r_h, r_w, rows, (h, w))  # broadcast add
        buffer = torch.empty(q.shape[0] * (rows[1] - rows[0]) * w * h * w + 3, dtype=torch.bfloat16)
        assert torch.equal(rel_pos_mask(q, r_h, r_w, rows, (h, w), out=buffer), expected)
