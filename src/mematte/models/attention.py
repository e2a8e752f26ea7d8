"""Multi-head self-attention over a token grid with decomposed relative position bias.

Two exact implementations of the same formula (ViTDet / MViTv2):

    attn = softmax(scale · q kᵀ + rel_h[q, row(k)] + rel_w[q, col(k)]) v

- ``"naive"``: materialises the (N, N) attention matrix per head, as the original
  ViTMatte / detectron2 code does. Memory is quadratic in tokens; kept as the
  paper-faithful reference and for the benchmark.
- ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (the fused
  flash kernel on CPU and GPU). With rel-pos, the queries go in chunks of grid rows and
  each chunk's bias ``rel_h + rel_w`` is the float ``attn_mask`` of one call
  (:func:`rel_pos_sdpa`): memory is one chunk's (rows·W, N) mask, and q, k, v keep their
  head width, so the kernel does the naive path's FLOPs without its N×N matrices.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mematte.models.layers import trunc_normal_

AttentionImpl = Literal["sdpa", "naive"]
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "naive")


def check_attention_impl(attn_impl: str) -> str:
    """Validate an ``attn_impl`` config value; raises ``ValueError`` naming the choices."""
    if attn_impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"Unknown attn_impl={attn_impl!r}; choose one of {list(ATTENTION_IMPLS)} "
            "(e.g. backbone.attn_impl=sdpa)."
        )
    return attn_impl


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings for every (query, key) coordinate pair along one axis.

    The table is linearly resized when the grid differs from the one it was trained on
    (as detectron2 does), so checkpoints trained at 512 px run at any resolution.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, C) table, ``L = 2·S − 1`` for the training grid size S.

    Returns:
        (q_size, k_size, C) embeddings.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, grid: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Per-query bias toward each key row and each key column (self-attention: q grid = k grid).

    Args:
        q: (B, N, D) unscaled queries, ``N = H·W`` in row-major order.
        rel_pos_h: (Lh, D) row table.  rel_pos_w: (Lw, D) column table.
        grid: (H, W).

    Returns:
        rel_h: (B, N, H) bias of each query toward key row i.
        rel_w: (B, N, W) bias of each query toward key column j.
    """
    h, w = grid
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (H, H, D)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (W, W, D)
    b, _, d = q.shape
    r_q = q.reshape(b, h, w, d)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h).reshape(b, h * w, h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w).reshape(b, h * w, w)
    return rel_h, rel_w


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    rel_bias: tuple[Tensor, Tensor] | None = None,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Reference attention that materialises the (N, N) matrix (the original ViTMatte code).

    Args:
        q, k, v: (B, N, D).
        rel_bias: optional (rel_h (B, N, H), rel_w (B, N, W)) from :func:`decomposed_rel_pos`.
        grid: (H, W) with ``H·W = N``; required with ``rel_bias``.

    Returns:
        (B, N, D).
    """
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, N, N)
    if rel_bias is not None:
        assert grid is not None
        h, w = grid
        rel_h, rel_w = rel_bias
        b, n, _ = attn.shape
        attn = (
            attn.view(b, n, h, w) + rel_h[:, :, :, None] + rel_w[:, :, None, :]
        ).view(b, n, n)
    attn = attn.softmax(dim=-1)
    return attn @ v


def rel_pos_mask(
    q: Tensor,
    r_h: Tensor,
    r_w: Tensor,
    rows: tuple[int, int],
    grid: tuple[int, int],
    out: Tensor | None = None,
) -> Tensor:
    """Additive decomposed rel-pos bias of the queries in grid rows ``[r0, r1)``: a float mask.

    Args:
        q: (U, (r1 − r0)·W, D) unscaled queries of those rows (U = batch·heads or windows·heads).
        r_h: (H, H, D) and r_w: (W, W, D) embeddings from :func:`get_rel_pos`.
        rows: (r0, r1) query rows of the grid.  grid: (H, W).
        out: optional buffer of at least U·(r1 − r0)·W·H·W elements to write into; reusing
            one across chunks matters on CPU (a fresh large allocation page-faults every time,
            which made building the mask cost more than the attention itself).

    Returns:
        (U, (r1 − r0)·W, H·W) bias ``rel_h[q, row(k)] + rel_w[q, col(k)]`` in q's dtype.
    """
    h, w = grid
    r0, r1 = rows
    u, _, d = q.shape
    r_q = q.reshape(u, r1 - r0, w, d)
    rel_h = torch.einsum("brwc,rkc->brwk", r_q, r_h[r0:r1])  # (U, R, W, H)
    rel_w = torch.einsum("brwc,wkc->brwk", r_q, r_w)  # (U, R, W, W)
    shape = (u, r1 - r0, w, h, w)
    if out is not None and q.dtype == torch.bfloat16 and h + w <= 64:
        # small (window) grids in bf16: [rel_h, rel_w] @ 0/1 expansion matrix, 5× faster on CPU
        # than the broadcast add and exactly equal (one non-zero pair per output, fp32 accumulate)
        pairs = torch.cat([rel_h, rel_w], dim=-1).view(-1, h + w)
        expand = torch.zeros(h + w, h, w, dtype=q.dtype, device=q.device)
        expand[torch.arange(h), torch.arange(h)] = 1  # row i of the keys
        expand[h + torch.arange(w), :, torch.arange(w)] = 1  # column j of the keys
        buffer = out.view(-1)[: math.prod(shape)].view(-1, h * w)
        return torch.mm(pairs, expand.view(h + w, h * w), out=buffer).view(u, (r1 - r0) * w, h * w)
    if out is None:  # autograd-friendly
        mask = rel_h[..., :, None] + rel_w[..., None, :]
    else:
        buffer = out.view(-1)[: math.prod(shape)].view(shape)
        mask = torch.add(rel_h[..., :, None], rel_w[..., None, :], out=buffer)
    return mask.reshape(u, (r1 - r0) * w, h * w)


def rel_pos_chunking(units: int, grid: tuple[int, int], chunk_elements: int | None) -> tuple[int, int]:
    """How :func:`rel_pos_sdpa` splits a call: (units per call, grid rows per call).

    One unit at a time with as many grid rows as ``chunk_elements`` allows; once a unit's
    whole grid fits, groups of units (window attention: many small grids). Rows before
    units because every call packs its units' keys and values anew (about 4 ms per unit for
    16K keys on one CPU core): the fewer calls per unit, the less of that. At least one row.
    None = everything in one call.
    """
    h, w = grid
    if chunk_elements is None:
        return units, h
    row_elements = w * h * w  # mask elements of one grid row of queries, one unit
    rows = max(1, min(h, chunk_elements // row_elements))
    group = 1 if rows < h else max(1, min(units, chunk_elements // (h * row_elements)))
    return group, rows


def rel_pos_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    grid: tuple[int, int],
    chunk_elements: int | None = None,
    query_rows: int | None = None,
) -> Tensor:
    """Exact decomposed-rel-pos attention: fused SDPA over chunks of queries, bias as float mask.

    The queries go in chunks of whole grid rows of one unit (or, when a unit's grid fits,
    groups of units: :func:`rel_pos_chunking`); each chunk's bias (:func:`rel_pos_mask`,
    (U', rows·W, N)) is the ``attn_mask`` of one
    :func:`torch.nn.functional.scaled_dot_product_attention` call, which runs the fused
    kernel (measured: a 16K-token call holds its mask and nothing N×N). q, k and v keep
    their head width (the former folding into q' = [q, rel_h, rel_w] made each head
    64 + H + W wide, 5× the FLOPs at 2048²), and memory is the mask of one chunk:
    ``chunk_elements`` bounds it (None = one call). One head at 2048² (16,384 tokens, one
    core): 1.3–1.8 s vs. 4.3–5.0 s naive and 1.1 s plain SDPA without bias.

    Args:
        q, k, v: (U, N, D), ``N = H·W`` in row-major order.
        scale: logit scale.
        rel_pos_h, rel_pos_w: (L, D) rel-pos tables (resized to the grid as needed).
        grid: (H, W).
        chunk_elements: most mask elements per call (at least one grid row of one unit).
        query_rows: only the queries of the grid's first rows (all keys still count), e.g.
            the real rows of a window whose bottom is padding; None = every row.

    Returns:
        (U, query_rows·W, D), (U, N, D) for every row.
    """
    h, w = grid
    u = q.shape[0]
    h_q = h if query_rows is None else query_rows
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (H, H, D)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (W, W, D)
    units, rows = rel_pos_chunking(u, grid, chunk_elements)
    out = q.new_empty((u, h_q * w, q.shape[-1]))
    # one mask buffer for every chunk; with autograd each chunk keeps its own (backward reads it)
    buffer = None if torch.is_grad_enabled() else q.new_empty(units * rows * w * h * w)
    for u0 in range(0, u, units):
        us = slice(u0, u0 + units)
        for r0 in range(0, h_q, rows):
            r1 = min(r0 + rows, h_q)
            qs = slice(r0 * w, r1 * w)
            mask = rel_pos_mask(q[us, qs], r_h, r_w, (r0, r1), grid, out=buffer)
            out[us, qs] = F.scaled_dot_product_attention(q[us, qs], k[us], v[us], attn_mask=mask, scale=scale)
    return out


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid, optional decomposed rel-pos.

    Args:
        dim: channels C.
        num_heads: heads; ``head_dim = C // num_heads``.
        qkv_bias: bias in the qkv projection.
        use_rel_pos: add decomposed relative position bias (tables ``rel_pos_h``/``rel_pos_w``).
        rel_pos_grid: grid side the tables are sized for (``2·S − 1`` rows): 14 for 14×14
            windows, 32 for global attention at the 512 px training size.
        attn_impl: ``"sdpa"`` (fused kernels, linear memory) or ``"naive"`` (N×N matrix).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_grid: int = 14,
        attn_impl: AttentionImpl = "sdpa",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = check_attention_impl(attn_impl)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        # Memory bound of one rel-pos SDPA call's bias mask (see rel_pos_sdpa); settable at run
        # time. 64 MiB: one grid row of 6 heads at 2048² (the fused kernel is as fast with
        # small chunks), whole windows in groups.
        self.mask_chunk_bytes = 64 * 1024**2
        if use_rel_pos:
            # Zero init, as detectron2 (rel_pos_zero_init=True).
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid - 1, self.head_dim))

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, C) tokens → q, k, v each (B·heads, N, head_dim)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * self.num_heads, n, self.head_dim)
        return qkv[0], qkv[1], qkv[2]

    def merge_heads(self, out: Tensor, batch: int) -> Tensor:
        """(B·heads, N, head_dim) → projected (B, N, C)."""
        _, n, _ = out.shape
        out = out.view(batch, self.num_heads, n, self.head_dim).transpose(1, 2)
        return self.proj(out.reshape(batch, n, self.num_heads * self.head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → (B, H, W, C)."""
        b, h, w, c = x.shape
        q, k, v = self.qkv_heads(x.reshape(b, h * w, c))
        return self.merge_heads(self.attend(q, k, v, (h, w)), b).view(b, h, w, c)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], query_rows: int | None = None) -> Tensor:
        """Attention of head-split q, k, v (U, N, D) over an (H, W) grid, before the merge
        and projection → (U, N, D); with ``query_rows`` only the queries of the grid's first
        rows, (U, query_rows·W, D) (:func:`rel_pos_sdpa`)."""
        h, w = grid
        if self.use_rel_pos and self.attn_impl == "sdpa":
            return rel_pos_sdpa(q, k, v, self.scale, self.rel_pos_h, self.rel_pos_w, grid,
                                self.mask_chunk_elements(q.element_size()), query_rows)
        rel_bias = None
        if self.use_rel_pos:
            rel_bias = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, grid)
        if self.attn_impl == "naive":
            out = naive_attention(q, k, v, self.scale, rel_bias, grid)
            return out if query_rows is None else out[:, : query_rows * w]
        if query_rows is not None:
            q = q[:, : query_rows * w]
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)

    def mask_chunk_elements(self, element_bytes: int = 4) -> int:
        """Most bias-mask elements one rel-pos SDPA call holds (``mask_chunk_bytes``)."""
        return max(1, self.mask_chunk_bytes // element_bytes)

    def rel_pos_peak_elements(self, units: int, grid: tuple[int, int], element_bytes: int = 4) -> int:
        """Elements the rel-pos SDPA path holds at once besides q, k, v and the output: the
        mask of one chunk (as :func:`rel_pos_sdpa` sizes it) and its two einsum terms.

        Args:
            units: the leading axis of the call (batch·heads, or windows·batch·heads).
            grid: (H, W) of one call.
        """
        h, w = grid
        group, rows = rel_pos_chunking(units, grid, self.mask_chunk_elements(element_bytes))
        return group * rows * w * (h * w + h + w)

    def init_rel_pos(self, std: float = 0.02) -> None:
        """Optional non-zero rel-pos init (detectron2's ``rel_pos_zero_init=False``)."""
        if self.use_rel_pos:
            trunc_normal_(self.rel_pos_h, std=std)
            trunc_normal_(self.rel_pos_w, std=std)
