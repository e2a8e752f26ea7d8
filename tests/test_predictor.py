"""The high-resolution Predictor: exactness, trimap handling, memory estimate and budget."""

from __future__ import annotations

import functools

import pytest
import torch

from mematte.data.composition import quantise_trimap
from mematte.inference import (
    GIB,
    MemoryBudgetError,
    Predictor,
    estimate_peak_bytes,
)
from mematte.models.decoder import DetailCapture
from mematte.models.ltrm import ConvTokenRefiner
from mematte.models.matting_net import MattingNet, clamp_to_trimap
from mematte.models.routed_block import RoutedBlock
from mematte.models.router import LocalGlobalRouter
from mematte.models.vit import ViT


def small_net(routed: bool = False, attn_impl: str = "sdpa", lean_decoder: bool = True) -> MattingNet:
    """A 4-block ViT (two global blocks, routed or not) and a narrow decoder; ``lean_decoder``
    False = the paper-faithful decoder (the original code's tensors and arithmetic)."""
    torch.manual_seed(0)
    block = functools.partial(RoutedBlock, router=LocalGlobalRouter, ltrm=ConvTokenRefiner) if routed else None
    backbone = ViT(embed_dim=48, depth=4, num_heads=3, window_size=4, global_block_indexes=(1, 3),
                   residual_block_indexes=(1, 3), rel_pos_grid=8, attn_impl=attn_impl, global_block=block)
    decoder = DetailCapture(in_chans=48, convstream_out=(8, 16, 24), fusion_out=(32, 16, 8, 8),
                            lean_inference=lean_decoder)
    for m in decoder.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return MattingNet(backbone, decoder).eval()


def sample(h: int = 150, w: int = 230):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, h, w, generator=g)
    trimap = (torch.rand(1, 1, h, w, generator=g) * 255).to(torch.uint8)
    return image, trimap


@pytest.mark.parametrize("routed", [False, True])
def test_predictor_equals_the_net_with_tiled_decoder(routed):
    net = small_net(routed)
    image, trimap_u8 = sample()
    trimap = quantise_trimap(trimap_u8)
    with torch.no_grad():
        expected = clamp_to_trimap(net(image, trimap).alpha, trimap)
    result = Predictor(net, tile=64, context=64)(image[0], trimap_u8[0, 0])
    assert result.alpha.shape == (1, 1, 150, 230) and result.alpha.dtype == torch.float32
    torch.testing.assert_close(result.alpha, expected, rtol=1e-5, atol=1e-5)
    assert len(result.routing) == (2 if routed else 0)


def test_mismatched_trimap_is_refused():
    image, trimap = sample()
    with pytest.raises(ValueError, match="does not match image"):
        Predictor(small_net())(image, trimap[..., :100])


def test_budget_refuses_with_the_estimate_and_the_fix():
    predictor = Predictor(small_net(routed=True), memory_budget_gb=0.001)
    with pytest.raises(MemoryBudgetError, match=r"4000×3000 image .* GiB budget\. Fix: lower max_tokens"):
        predictor(torch.rand(3, 3000, 4000), torch.zeros(3000, 4000))


def test_estimate_grows_with_pixels_and_caps_help():
    net = small_net(routed=True)
    small, big = estimate_peak_bytes(net, 512, 512), estimate_peak_bytes(net, 2048, 2048)
    # 16× the pixels: inputs and backbone grow linearly, the tiled decoder does not
    activations = [e["total"] - e["weights"] - e["margin"] for e in (small, big)]
    assert 4 < activations[1] / activations[0] <= 16
    assert big["total"] > small["total"] + 15 * 4 * 512 * 512  # at least the trimap's growth
    for block in net.backbone.routed_blocks:
        block.max_tokens = 256
    assert estimate_peak_bytes(net, 2048, 2048)["backbone"] <= estimate_peak_bytes(small_net(True), 2048, 2048)["backbone"]


def test_naive_attention_estimate_is_quadratic():
    fused = estimate_peak_bytes(small_net(), 2048, 2048)["backbone"]
    naive = estimate_peak_bytes(small_net(attn_impl="naive"), 2048, 2048)["backbone"]
    assert naive > 10 * fused


def test_estimate_parts_add_up():
    net = small_net(routed=True)
    est = estimate_peak_bytes(net, 400, 560, tile=128, context=64)
    activations = est["inputs"] + max(est["backbone"], est["decoder"], est["finish"])
    assert est["total"] == est["weights"] + activations + est["margin"]
    assert est["margin"] > 0.2 * activations
    assert est["total"] < 1 * GIB
    # the encoded trimap; the network input is computed window by window (LazyInput)
    assert est["inputs"] >= 4 * 400 * 560
    assert est["decoder"] >= 4 * 400 * 560  # at least the fp32 alpha being filled


def test_freed_memory_is_released_between_stages_on_cpu(monkeypatch):
    """Lean CPU inference hands freed heap back after the backbone and after the decoder; the
    paper-faithful decoder keeps the original code's memory behaviour."""
    import mematte.inference as inference

    calls = []
    monkeypatch.setattr(inference, "release_free_memory", lambda: calls.append(1) or True)
    image, trimap = sample(96, 128)
    net = small_net()
    Predictor(net, precision="fp32")(image, trimap)
    assert len(calls) == 2  # after the backbone, after the decoder (token maps under the threshold)
    assert not any(block._forward_hooks for block in net.backbone.blocks)  # hooks removed
    faithful = small_net(lean_decoder=False)
    calls.clear()
    Predictor(faithful, precision="fp32")(image, trimap)
    assert calls == []
    # the estimate's fixed margin follows: less retained heap where memory is released; where
    # the heap is kept, the model counts it, and the proportional margin covers the rest
    kept_heap = 4 * inference._backbone_peak_elements(faithful.backbone, (32, 32), 1, 4, retains_heap=True)[2]
    assert kept_heap > 0
    for model, fixed, heap in ((net, inference._RELEASED_MARGIN_BYTES, 0), (faithful, inference._MARGIN_BYTES, kept_heap)):
        est = estimate_peak_bytes(model, 512, 512)
        activations = est["total"] - est["weights"] - est["margin"]
        assert est["margin"] == int(inference._MARGIN_FRACTION * (activations - heap)) + fixed
    assert inference._RELEASED_MARGIN_BYTES < inference._MARGIN_BYTES


def test_estimate_counts_the_heap_a_process_without_release_keeps(monkeypatch):
    """On a CPU without release between stages (the paper-faithful decoder), tensors below
    glibc's mmap threshold come from the heap, which stays resident once freed: later steps
    come on top of it (the naive K×K matrices, mapped when they are large, and the decoder),
    while tensors at or above the threshold are mappings handed back when freed."""
    import mematte.inference as inference
    from mematte.inference import _backbone_peak_elements

    net = small_net(routed=True, attn_impl="naive", lean_decoder=False)
    grid = (448 // 16, 448 // 16)
    u = grid[0] * grid[1] * net.backbone.embed_dim
    peak, matrices, heap = _backbone_peak_elements(net.backbone, grid, 1, 4, retains_heap=False)
    assert matrices > 0 and heap == 0  # nothing is kept where memory is released
    # every tensor small (this net's are all under 32 MiB): the heap holds the most ever
    # alive, the K×K matrices included, and the peak is what releasing would have
    kept_peak, kept_matrices, kept_heap = _backbone_peak_elements(net.backbone, grid, 1, 4, retains_heap=True)
    assert kept_peak == peak and kept_heap == peak - u
    # every tensor mapped: nothing is retained
    monkeypatch.setattr(inference, "BOUNDED_MMAP_BYTES", 0)
    assert _backbone_peak_elements(net.backbone, grid, 1, 4, retains_heap=True) == (peak, matrices, 0)
    # the threshold at a K×K matrix: the matrices are mapped, and they stack on the heap the
    # window blocks (naive, every window in one call) left, more than the routed block holds
    monkeypatch.setattr(inference, "BOUNDED_MMAP_BYTES", 4 * matrices // 2)
    mapped_peak, mapped_matrices, mapped_heap = _backbone_peak_elements(net.backbone, grid, 1, 4, retains_heap=True)
    assert mapped_matrices == matrices and 0 < mapped_heap < kept_heap
    assert mapped_peak == u + mapped_heap + matrices > peak
    monkeypatch.undo()
    faithful = estimate_peak_bytes(net, 448, 448)  # CPU, not releasing: retains the heap
    monkeypatch.setattr(inference, "releases_freed_memory", lambda *_: True)
    releasing = estimate_peak_bytes(net, 448, 448)
    assert faithful["backbone"] == 4 * kept_peak and releasing["backbone"] == 4 * peak
    assert faithful["decoder"] - releasing["decoder"] == 4 * kept_heap
    # on CUDA (the caching allocator's own accounting) nothing is retained
    monkeypatch.setattr(inference, "releases_freed_memory", lambda *_: False)
    cuda = estimate_peak_bytes(net, 448, 448, device_type="cuda")
    assert cuda["backbone"] == 4 * peak


def test_large_images_release_memory_after_every_block(monkeypatch):
    """Freed heap goes back after every backbone block once a token map reaches the threshold
    (the small net's 48 channels at 96×128 px: 48 tokens · 48 · 4 bytes = 9,216 bytes)."""
    import mematte.inference as inference

    calls, heap = [], []
    monkeypatch.setattr(inference, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(inference, "tune_heap", lambda reuse: heap.append(reuse) or True)
    monkeypatch.setattr(inference, "BLOCK_RELEASE_MIN_TOKEN_MAP_BYTES", 9216)
    net = small_net()
    image, trimap = sample(96, 128)
    Predictor(net, precision="fp32")(image, trimap)
    assert len(calls) == len(net.backbone.blocks) + 2
    assert heap == [False]  # large buffers unmapped when freed
    assert not any(block._forward_hooks for block in net.backbone.blocks)  # hooks removed
    calls.clear()
    heap.clear()
    Predictor(net, precision="fp32")(*sample(64, 128))  # 32 tokens: below
    assert len(calls) == 2
    assert heap == [True]  # freed buffers reused between the release points
    # the paper-faithful decoder keeps the process's allocator as it is
    faithful = small_net(lean_decoder=False)
    heap.clear()
    Predictor(faithful, precision="fp32")(image, trimap)
    assert heap == []


def test_bad_options():
    with pytest.raises(ValueError, match="precision"):
        Predictor(small_net(), precision="fp8")
    with pytest.raises(ValueError, match="tile=100"):
        Predictor(small_net(), tile=100)
    with pytest.raises(ValueError, match="max_tokens"):
        Predictor(small_net(routed=True), max_tokens=0)
