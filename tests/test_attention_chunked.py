"""Exact rel-pos attention through fused SDPA over query chunks (the "sdpa" path) vs. the N×N one."""

from __future__ import annotations

import pytest
import torch

from mematte.models.attention import (
    Attention,
    decomposed_rel_pos,
    get_rel_pos,
    naive_attention,
    rel_pos_chunking,
    rel_pos_mask,
    rel_pos_sdpa,
)


def _qkv(units: int, grid: tuple[int, int], dim: int = 16) -> tuple[torch.Tensor, ...]:
    n = grid[0] * grid[1]
    return tuple(torch.randn(units, n, dim) for _ in range(3))


@pytest.mark.parametrize("grid", [(5, 7), (14, 14), (40, 23)])
@pytest.mark.parametrize("chunk", ["one_call", "one_row", "three_rows", "unit_groups"])
def test_rel_pos_sdpa_equals_naive_for_every_chunking(grid, chunk):
    torch.manual_seed(0)
    units, d = 4, 16
    q, k, v = _qkv(units, grid, d)
    # tables sized for a 14 grid: exercises the linear resize for other grids
    table_h, table_w = torch.randn(27, d), torch.randn(27, d)
    n = grid[0] * grid[1]
    chunk_elements = {"one_call": None, "one_row": 1, "three_rows": 3 * grid[1] * n + 1,
                      "unit_groups": 2 * n * n}[chunk]
    ref = naive_attention(q, k, v, d**-0.5, decomposed_rel_pos(q, table_h, table_w, grid), grid)
    with torch.inference_mode():  # the reused mask buffer
        out = rel_pos_sdpa(q, k, v, d**-0.5, table_h, table_w, grid, chunk_elements)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_chunking_prefers_rows_of_one_unit_then_groups_units():
    grid = (8, 10)
    row = 10 * 80  # mask elements of one grid row of queries
    assert rel_pos_chunking(6, grid, None) == (6, 8)
    assert rel_pos_chunking(6, grid, 1) == (1, 1)  # at least one row
    assert rel_pos_chunking(6, grid, 3 * row + 5) == (1, 3)
    assert rel_pos_chunking(6, grid, 8 * row) == (1, 8)  # a whole grid, one unit
    assert rel_pos_chunking(6, grid, 2 * 8 * row) == (2, 8)
    assert rel_pos_chunking(6, grid, 100 * 8 * row) == (6, 8)


def test_mask_is_the_decomposed_bias_and_fills_a_given_buffer():
    torch.manual_seed(0)
    grid, d = (6, 5), 8
    q = torch.randn(3, 30, d)
    table_h, table_w = torch.randn(11, d), torch.randn(9, d)
    rel_h, rel_w = decomposed_rel_pos(q, table_h, table_w, grid)  # (U, N, H), (U, N, W)
    full = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(3, 30, 30)
    r_h, r_w = get_rel_pos(6, 6, table_h), get_rel_pos(5, 5, table_w)
    buffer = torch.full((3 * 2 * 5 * 30 + 7,), float("nan"))
    mask = rel_pos_mask(q[:, 10:20], r_h, r_w, (2, 4), grid, out=buffer)
    assert mask.shape == (3, 10, 30) and mask.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(mask, full[:, 10:20])


def test_attention_module_chunks_by_its_byte_budget_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    grid = (9, 11)
    naive = Attention(48, num_heads=3, use_rel_pos=True, rel_pos_grid=8, attn_impl="naive")
    naive.init_rel_pos(std=0.5)
    chunked = Attention(48, num_heads=3, use_rel_pos=True, rel_pos_grid=8, attn_impl="sdpa")
    chunked.load_state_dict(naive.state_dict())
    chunked.mask_chunk_bytes = 4 * 2 * 11 * 99  # two grid rows of one head per call
    assert rel_pos_chunking(6, grid, chunked.mask_chunk_elements()) == (1, 2)
    x = torch.randn(2, *grid, 48)
    with torch.inference_mode():
        torch.testing.assert_close(chunked(x), naive(x), atol=1e-5, rtol=1e-5)
    # training: every chunk keeps its own mask, gradients as the naive path
    chunked(x).square().sum().backward()
    naive(x).square().sum().backward()
    for name in ("rel_pos_h", "rel_pos_w"):
        torch.testing.assert_close(getattr(chunked, name).grad, getattr(naive, name).grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked.qkv.weight.grad, naive.qkv.weight.grad, atol=1e-4, rtol=1e-4)


def test_peak_elements_count_the_mask_of_one_chunk():
    attn = Attention(48, num_heads=3, use_rel_pos=True, rel_pos_grid=8)
    attn.mask_chunk_bytes = 4 * 2 * 11 * 99
    # two rows of one unit: a (22, 99) mask plus its (22, 9) and (22, 11) einsum terms
    assert attn.rel_pos_peak_elements(6, (9, 11)) == 22 * (99 + 9 + 11)


def test_backbone_inference_in_token_chunks_equals_the_original_schedule():
    """Window attention in groups of windows, the MLP in chunks of tokens and in-place
    residual adds (inference) give the features of the unchunked pass."""
    from mematte.models.vit import ViT

    torch.manual_seed(0)
    chunked = ViT(embed_dim=48, num_heads=3, depth=4, window_size=4, global_block_indexes=(1, 3),
                  residual_block_indexes=(1,), rel_pos_grid=8, chunk_tokens=40)
    for blk in chunked.blocks:
        blk.attn.init_rel_pos(std=0.5)
        blk.attn.mask_chunk_bytes = 4 * 3 * 14 * 140  # three grid rows per call at 10×14
    original = ViT(embed_dim=48, num_heads=3, depth=4, window_size=4, global_block_indexes=(1, 3),
                   residual_block_indexes=(1,), rel_pos_grid=8, chunk_tokens=None, attn_impl="naive")
    original.load_state_dict(chunked.state_dict())
    assert chunked.blocks[0].window_group(12) == 2 and original.blocks[0].window_group(12) == 12
    x = torch.randn(1, 4, 160, 224)
    with torch.inference_mode():
        ours, ref = chunked(x).features, original(x).features
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked(x).features, ours, atol=1e-4, rtol=1e-4)  # autograd path


@pytest.mark.parametrize("impl", ["sdpa", "naive"])
@pytest.mark.parametrize("use_rel_pos", [True, False])
@pytest.mark.parametrize("query_rows", [1, 3, 7])
def test_attend_for_the_first_query_rows_is_a_slice_of_every_row(impl, use_rel_pos, query_rows):
    """Only the queries of a window's real rows (all keys still count): the first rows of
    the whole result, for every chunking of the rel-pos SDPA path."""
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2, use_rel_pos=use_rel_pos, rel_pos_grid=7, attn_impl=impl)
    attn.init_rel_pos()
    q, k, v = _qkv(6, (7, 7), 16)
    for chunk_bytes in (4, 64 * 1024**2):  # one grid row per call; everything in one call
        attn.mask_chunk_bytes = chunk_bytes
        with torch.inference_mode():
            whole = attn.attend(q, k, v, (7, 7))
            first = attn.attend(q, k, v, (7, 7), query_rows=query_rows)
        assert first.shape == (6, query_rows * 7, 16)
        torch.testing.assert_close(first, whole[:, : query_rows * 7], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_window_strips_on_real_tokens_equal_the_padded_windows(qkv_bias, batch):
    """The lean window attention (qkv and projection on real tokens, padding filled with the
    qkv bias, padded query rows skipped) equals zero-padding and partitioning the grid."""
    from mematte.models.vit import Block

    torch.manual_seed(0)
    blk = Block(32, num_heads=2, window_size=7, use_rel_pos=True, qkv_bias=qkv_bias).eval()
    blk.attn.init_rel_pos()
    if qkv_bias:
        torch.nn.init.normal_(blk.attn.qkv.bias)
    x = torch.randn(batch, 16, 19, 32)  # 3×3 windows of 7, the last row and column padded
    with torch.enable_grad():
        mixed, _ = blk.mix_tokens(x)
    for chunk in (49, 2 * 49, 100 * 49):  # one window per call, two, a whole row of windows
        blk.window_chunk_tokens = chunk
        with torch.inference_mode():
            lean, _ = blk.mix_into(x.clone())
        torch.testing.assert_close(lean, x + mixed.detach(), atol=1e-5, rtol=1e-5)
