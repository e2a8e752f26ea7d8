"""Multi-head self-attention over a token grid with decomposed relative position bias.

Two exact implementations of the same formula (ViTDet / MViTv2):

    attn = softmax(scale · q kᵀ + rel_h[q, row(k)] + rel_w[q, col(k)]) v

- ``"naive"``: materialises the (N, N) attention matrix per head, as the original
  ViTMatte / detectron2 code does. Memory is quadratic in tokens; kept as the
  paper-faithful reference and for the benchmark.
- ``"sdpa"``: folds the decomposed bias into augmented queries and keys,
  ``q' = [q·scale, rel_h(q), rel_w(q)]`` and ``k' = [k, onehot(row(k)), onehot(col(k))]``,
  so that ``q'·k' = scale·q·k + rel_h + rel_w`` exactly, and calls
  :func:`torch.nn.functional.scaled_dot_product_attention` with ``scale=1``. The fused
  (flash / memory-efficient) kernels then apply: memory is linear in tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import trunc_normal_

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


def folded_rel_pos_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    rel_bias: tuple[Tensor, Tensor],
    grid: tuple[int, int],
) -> Tensor:
    """Exact decomposed-rel-pos attention through the fused SDPA kernels (linear memory).

    ``q' = [q·scale, rel_h, rel_w]``, ``k' = [k, onehot(row), onehot(col)]``, ``scale=1``.
    The fused CPU kernel wants one head dim for q, k and v, so v is zero-padded to q's
    width and the output sliced back; otherwise SDPA silently falls back to the N×N path.

    Args:
        q, k, v: (B, N, D).
        rel_bias: (rel_h (B, N, H), rel_w (B, N, W)).
        grid: (H, W), ``H·W = N``.

    Returns:
        (B, N, D).
    """
    h, w = grid
    rel_h, rel_w = rel_bias
    b, n, d = q.shape
    rows = torch.arange(n, device=q.device) // w
    cols = torch.arange(n, device=q.device) % w
    onehot_rows = F.one_hot(rows, h).to(k.dtype).expand(b, n, h)
    onehot_cols = F.one_hot(cols, w).to(k.dtype).expand(b, n, w)
    q_aug = torch.cat([q * scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], dim=-1)
    k_aug = torch.cat([k, onehot_rows, onehot_cols], dim=-1)
    v_aug = F.pad(v, (0, q_aug.shape[-1] - d))
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)
    return out[..., :d]


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
        # Memory bound of one folded rel-pos call (see fold_chunk); settable at run time.
        self.fold_chunk_bytes = 512 * 1024**2
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
        if self.use_rel_pos and self.attn_impl == "sdpa":
            out = self._folded_in_chunks(q, k, v, (h, w))
        else:
            rel_bias = None
            if self.use_rel_pos:
                rel_bias = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w))
            if self.attn_impl == "naive":
                out = naive_attention(q, k, v, self.scale, rel_bias, (h, w))
            else:
                out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.merge_heads(out, b).view(b, h, w, c)

    def fold_elements(self, num_tokens: int, grid: tuple[int, int]) -> int:
        """Elements one head of the folded rel-pos path holds at once: the rel-pos terms, the
        augmented q'/k'/v' and the SDPA output, about ``5 · N · (head_dim + H + W)``."""
        return 5 * num_tokens * (self.head_dim + grid[0] + grid[1])

    def fold_chunk(self, num_tokens: int, grid: tuple[int, int], element_bytes: int = 4) -> int:
        """Heads (of the B·heads axis) processed together by the folded rel-pos path.

        Heads go in groups whose :meth:`fold_elements` stay under ``fold_chunk_bytes`` (at
        least one head), so peak memory stays bounded at 4K–8K while small inputs (windows,
        512² crops) still run all heads in one call.
        """
        per_head = self.fold_elements(num_tokens, grid) * element_bytes
        return max(1, self.fold_chunk_bytes // per_head)

    def _folded_in_chunks(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        """Folded rel-pos SDPA over groups of heads: q, k, v (B·heads, N, D) → (B·heads, N, D)."""
        chunk = self.fold_chunk(q.shape[1], grid, q.element_size())
        if chunk >= q.shape[0]:
            bias = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, grid)
            return folded_rel_pos_sdpa(q, k, v, self.scale, bias, grid)
        out = torch.empty_like(q)
        for start in range(0, q.shape[0], chunk):
            sl = slice(start, start + chunk)
            bias = decomposed_rel_pos(q[sl], self.rel_pos_h, self.rel_pos_w, grid)
            out[sl] = folded_rel_pos_sdpa(q[sl], k[sl], v[sl], self.scale, bias, grid)
            del bias
        return out

    def init_rel_pos(self, std: float = 0.02) -> None:
        """Optional non-zero rel-pos init (detectron2's ``rel_pos_zero_init=False``)."""
        if self.use_rel_pos:
            trunc_normal_(self.rel_pos_h, std=std)
            trunc_normal_(self.rel_pos_w, std=std)
