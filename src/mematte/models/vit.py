"""ViTDet-style plain ViT used by ViTMatte: window attention, a few global blocks, conv residuals.

Module names follow the official ViTMatte code (``patch_embed.proj``, ``blocks.{i}.attn.qkv``,
``blocks.{i}.residual.conv1`` …) so official checkpoints map onto it with few renames.

Token grids are kept as (B, H, W, C) between blocks (as detectron2 does) because both window
partitioning and the conv residual blocks need the 2-D layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mematte.models.attention import Attention, AttentionImpl
from mematte.models.layers import (
    INFERENCE_CHUNK_TOKENS,
    DropPath,
    LayerNorm2d,
    Mlp,
    resample_abs_pos_embed,
    trunc_normal_,
)
from mematte.models import winograd


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split a grid into non-overlapping windows, zero-padding bottom/right.

    Args:
        x: (B, H, W, C).
        window_size: window side S.

    Returns:
        windows: (B·nW, S, S, C) and the padded grid size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, padded: tuple[int, int], size: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, S, S, C) → (B, H, W, C), padding removed."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class ResBottleneck(nn.Module):
    """Residual conv bottleneck after the global blocks (ViTDet's ``ResBottleneckBlock``).

    1×1 C→C/2, LN, GELU, 3×3, LN, GELU, 1×1 C/2→C, LN (zero-initialised so the block starts
    as identity), added to the input.
    """

    def __init__(self, dim: int, bottleneck_dim: int | None = None) -> None:
        super().__init__()
        mid = bottleneck_dim or dim // 2
        self.conv1 = nn.Conv2d(dim, mid, 1, bias=False)
        self.norm1 = LayerNorm2d(mid)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(mid)
        self.act2 = nn.GELU()
        self.conv3 = nn.Conv2d(mid, dim, 1, bias=False)
        self.norm3 = LayerNorm2d(dim)
        for conv in (self.conv1, self.conv2, self.conv3):
            # detectron2's c2_msra_fill
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.norm3.weight)
        nn.init.zeros_(self.norm3.bias)
        self.winograd = True  # at fp32 CPU inference (add_into): the 3×3 conv by Winograd

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch alone: (B, C, H, W) → (B, C, H, W)."""
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        return self.norm3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        return x + self.branch(x)

    def add_into(self, x: Tensor, band_rows: int) -> Tensor:
        """Inference: ``x + branch(x)`` for a contiguous (B, H, W, C) grid, written into ``x``.

        With ``band_rows`` below the grid's height, the branch runs on bands of that many rows
        in token layout (the 1×1 convs as linear layers, the LayerNorms over the last axis), so
        its C/2-wide layers exist for one band at a time. Every row goes through ``conv1``
        once: the 3×3 conv of a band reads the last C/2-wide row of the band before and the
        first of the band after, which is computed (from rows of ``x`` that no update has
        reached yet) before this band's update is added. On a CPU in fp32 the 3×3 conv is a
        Winograd convolution (:mod:`~mematte.models.winograd`; ``winograd = False`` turns it
        off) and the bands are whole 4-row tiles. Returns ``x`` (a promoted copy when the
        update's dtype is wider, as ``x + update`` would be).
        """
        h = x.shape[1]
        if band_rows >= h:  # one band: the branch as defined (the original code's tensors)
            return add_rows_(x, 0, h, self.branch(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        use_winograd = self.winograd_eligible and winograd.input_qualifies(x)
        if use_winograd:
            band_rows = 4 * -(-band_rows // 4)
        band_rows = max(1, min(band_rows, h))
        nxt = self._mid(x[:, :band_rows])
        above: Tensor | None = None  # the C/2-wide row above the band (None at the top)
        for r0 in range(0, h, band_rows):
            r1 = min(r0 + band_rows, h)
            mid = nxt
            nxt = self._mid(x[:, r1 : r1 + band_rows]) if r1 < h else None
            below = nxt[:, :1] if nxt is not None else None
            out = self._conv2_rows(above, mid, below, use_winograd)  # (B, rows, W, C/2)
            above = mid[:, -1:]
            del mid
            hidden = self.act2(self.norm2.channels_last(out))
            update = self.norm3.channels_last(F.linear(hidden, self.conv3.weight.flatten(1)))
            del hidden, out
            x = add_rows_(x, r0, r1, update)
            del update
        return x

    @property
    def winograd_eligible(self) -> bool:
        """Whether fp32 CPU inference runs the 3×3 conv as a Winograd convolution."""
        return self.winograd and winograd.conv_qualifies(self.conv2)

    def _mid(self, rows: Tensor) -> Tensor:
        """``act1(norm1(conv1(rows)))`` in token layout: (B, r, W, C) → (B, r, W, C/2)."""
        return self.act1(self.norm1.channels_last(F.linear(rows, self.conv1.weight.flatten(1))))

    def _conv2_rows(self, above: Tensor | None, mid: Tensor, below: Tensor | None, use_winograd: bool) -> Tensor:
        """``conv2`` over the rows of ``mid`` (B, r, W, C/2), with the rows ``above`` and
        ``below`` (B, 1, W, C/2) as context (None: the grid's zero padding) → (B, r, W, C/2)."""
        b, r, w, c = mid.shape
        if use_winograd:
            padded = winograd.PaddedInput(mid, b, c, r, w)  # zero-bordered; context rows replace the zeros
            padded.buffer[:, 1 : r + 1, 1 : w + 1] = mid
            if above is not None:
                padded.buffer[:, :1, 1 : w + 1] = above
            if below is not None:
                padded.buffer[:, r + 1 : r + 2, 1 : w + 1] = below
            weight_t, _ = winograd.cached_winograd_weight(self, (self.conv2.weight,), lambda: (self.conv2.weight, None))
            return winograd.conv3x3_winograd_padded(padded, weight_t).permute(0, 2, 3, 1)
        zeros = mid.new_zeros((b, 1, w, c))
        rows = torch.cat([zeros if above is None else above, mid, zeros if below is None else below], dim=1)
        out = F.conv2d(rows.permute(0, 3, 1, 2), self.conv2.weight, None, 1, (0, 1))
        return out.permute(0, 2, 3, 1)


@dataclass
class RoutingInfo:
    """What a routed block decided, for the keep-ratio loss, logging and routing maps.

    Attributes:
        decision: (B, N) float, 1 = token went to global attention (hard, straight-through
            gradients during training).
        log_probs: (B, N, 2) router log-probabilities (index 0 = global attention), or None.
        grid: (H, W) token grid, ``H·W = N``.
    """

    decision: Tensor
    log_probs: Tensor | None
    grid: tuple[int, int]


@dataclass
class BackboneOutput:
    """Backbone result: last features (B, C, H/16, W/16) and per-routed-block decisions."""

    features: Tensor
    routing: list[RoutingInfo] = field(default_factory=list)


class Block(nn.Module):
    """Transformer block over a (B, H, W, C) grid: window or global attention, MLP, residual.

    Args:
        dim: channels C.  num_heads: attention heads.  mlp_ratio: MLP hidden = C·ratio.
        qkv_bias: bias in qkv.  drop_path: stochastic depth rate.
        window_size: > 0 for window attention over S×S windows, 0 for global attention.
        use_rel_pos: decomposed relative position bias.
        rel_pos_grid: grid side the rel-pos tables are sized for.
        use_residual_block: add a :class:`ResBottleneck` after the block.
        attn_impl: ``"sdpa"`` or ``"naive"`` (see :mod:`mematte.models.attention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_grid: int = 14,
        use_residual_block: bool = False,
        attn_impl: AttentionImpl = "sdpa",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_grid=window_size if window_size > 0 else rel_pos_grid,
            attn_impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.window_size = window_size
        # inference: tokens per window-attention call (groups of windows; None = all windows
        # at once; settable at run time, ViT sets it from its chunk_tokens)
        self.window_chunk_tokens: int | None = INFERENCE_CHUNK_TOKENS
        self.residual = ResBottleneck(dim) if use_residual_block else None

    def mix_tokens(self, x: Tensor) -> tuple[Tensor, RoutingInfo | None]:
        """Token-mixing branch (before the shortcut add). x: (B, H, W, C) → (B, H, W, C).

        Routed blocks override this; they return their routing decisions as well.
        """
        y = self.norm1(x)
        if self.window_size > 0:
            h, w = y.shape[1:3]
            windows, padded = window_partition(y, self.window_size)
            del y
            group = windows.shape[0] if torch.is_grad_enabled() else self.window_group(windows.shape[0])
            if group >= windows.shape[0]:
                windows = self.attn(windows)
            else:  # inference: qkv and attention of a group of windows at a time, in place
                for start in range(0, windows.shape[0], group):
                    windows[start : start + group] = self.attn(windows[start : start + group])
            return window_unpartition(windows, self.window_size, padded, (h, w)), None
        return self.attn(y), None

    def set_chunk_tokens(self, chunk_tokens: int | None) -> None:
        """Tokens per pass of every inference branch (MLP chunks, window groups, conv bands);
        None = everything at once, as the original code."""
        self.mlp.chunk_tokens = chunk_tokens
        self.window_chunk_tokens = chunk_tokens

    def window_group(self, num_windows: int) -> int:
        """Windows per attention call at inference: about ``window_chunk_tokens`` tokens."""
        if self.window_chunk_tokens is None:
            return num_windows
        return max(1, min(num_windows, self.window_chunk_tokens // self.window_size**2))

    def forward(self, x: Tensor, inplace: bool = False) -> tuple[Tensor, RoutingInfo | None]:
        """x: (B, H, W, C) → ((B, H, W, C), routing info or None).

        ``inplace`` (inference, when the caller no longer needs ``x``, as :meth:`ViT.forward`):
        the block updates ``x`` where it is (:meth:`forward_lean`) instead of allocating
        token maps for the branches.
        """
        if inplace and not torch.is_grad_enabled() and not self.training and x.is_contiguous():
            return self.forward_lean(x)
        mixed, routing = self.mix_tokens(x)
        x = _residual_add(x, self.drop_path(mixed), inplace)
        del mixed
        x = _residual_add(x, self.drop_path(self.mlp(self.norm2(x))), inplace)
        if self.residual is not None:
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x, routing

    # ------------------------------------------------------------------ lean inference
    def band_tokens(self) -> int:
        """Tokens per band of the in-place inference branches (window rows, MLP chunks, conv
        residual rows): ``window_chunk_tokens`` (:data:`~mematte.models.layers.INFERENCE_CHUNK_TOKENS` by
        default; None = everything at once)."""
        chunk = self.window_chunk_tokens if self.window_chunk_tokens is not None else self.mlp.chunk_tokens
        return chunk if chunk is not None else 1 << 62

    def forward_lean(self, x: Tensor) -> tuple[Tensor, RoutingInfo | None]:
        """Inference on a contiguous (B, H, W, C) grid that the caller no longer needs.

        The same values as :meth:`forward` (the same layers on the same tokens), but every
        branch adds its output into ``x`` band by band: window attention for bands of window
        rows (windows do not overlap and LayerNorm is per token, so a band's update never
        changes what another band reads), the MLP for chunks of tokens, the conv residual in
        row bands with one row of context (:meth:`ResBottleneck.add_into`). Besides ``x``
        only one band's tensors exist at a time (global attention and routed blocks mix the
        whole grid first). Returns the updated grid (``x``, or a promoted copy under autocast).
        """
        x, routing = self.mix_into(x)
        x = self.mlp_into(x)
        if self.residual is not None:
            b, h, w, c = x.shape
            rows = max(1, -(-self.band_tokens() // (b * w)))
            x = self.residual.add_into(x, rows)
        return x, routing

    def mix_into(self, x: Tensor) -> tuple[Tensor, RoutingInfo | None]:
        """``x + mix_tokens(x)`` written into ``x`` (window attention: band by band)."""
        if self.window_size <= 0:
            mixed, routing = self.mix_tokens(x)
            return add_rows_(x, 0, x.shape[1], mixed), routing
        b, h, w, c = x.shape
        s = self.window_size
        if self.uses_window_strips():
            per_image = self.strip_windows(b, h, w)
            for r0 in range(0, h, s):
                for c0 in range(0, w, per_image * s):
                    strip = x[:, r0 : r0 + s, c0 : c0 + per_image * s]
                    x = add_rows_(x, r0, r0 + strip.shape[1], self.window_strip_attention(strip), c0)
            return x, None
        # all at once (the original code's tensors) or naive attention: the normalised band
        # zero-padded and partitioned
        per_row = b * -(-w // s)  # windows in one row of windows
        group = self.window_group(per_row * -(-h // s))
        rows = s * max(1, group // per_row)  # grid rows per band: whole rows of windows
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            windows, padded = window_partition(self.norm1(x[:, r0:r1]), s)
            for start in range(0, windows.shape[0], group):
                windows[start : start + group] = self.attn(windows[start : start + group])
            x = add_rows_(x, r0, r1, window_unpartition(windows, s, padded, (r1 - r0, w)))
            del windows
        return x, None

    def uses_window_strips(self) -> bool:
        """Whether lean inference runs window attention in strips on real tokens
        (:meth:`window_strip_attention`): in token chunks with the SDPA kernels."""
        return self.window_size > 0 and self.window_chunk_tokens is not None and self.attn.attn_impl == "sdpa"

    def strip_windows(self, batch: int, h: int, w: int) -> int:
        """Windows per image in one strip (one call of :meth:`window_strip_attention` on a
        (batch, h, w) grid): about ``window_group`` windows in all, at most a row of them."""
        s = self.window_size
        per_row = -(-w // s)
        return max(1, min(per_row, self.window_group(batch * per_row * -(-h // s)) // batch))

    def window_strip_attention(self, strip: Tensor) -> Tensor:
        """Window attention over a strip of whole windows, one window high, on its real tokens:
        (B, n, m, C) with n ≤ S rows → the attention branch's output (B, n, m, C).

        The same values as zero-padding the normalised grid and partitioning it: a padded
        token is zero after the LayerNorm, so its q, k and v are the qkv bias, which fills
        the windows' padding here; the qkv and output projections run on real tokens only,
        and in windows whose bottom rows are padding only the real rows' queries attend.
        At 2048² (128 token rows and columns in 14-token windows) the padding is 16% of the
        windows' tokens.
        """
        b, n, m, c = strip.shape
        s, attn = self.window_size, self.attn
        heads, head_dim = attn.num_heads, attn.head_dim
        nw = -(-m // s)  # windows along the strip
        qkv = attn.qkv(self.norm1(strip))  # (B, n, m, 3C)
        windows = qkv.new_empty((b, s, nw * s, 3 * c))
        fill = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(3 * c)
        windows[:, :n, :m] = qkv
        del qkv
        if n < s:
            windows[:, n:] = fill.to(windows.dtype)
        if m < nw * s:
            windows[:, :n, m:] = fill.to(windows.dtype)
        # (B, S, nw·S, 3, heads, D) → q, k, v (B·nw·heads, S·S, D)
        qkv_heads = windows.view(b, s, nw, s, 3, heads, head_dim).permute(4, 0, 2, 5, 1, 3, 6)
        q, k, v = qkv_heads.reshape(3, b * nw * heads, s * s, head_dim)
        del windows, qkv_heads
        out = attn.attend(q, k, v, (s, s), query_rows=n if n < s else None)  # (B·nw·heads, n·S, D)
        del q, k, v
        out = out.view(b, nw, heads, n, s, head_dim).permute(0, 3, 1, 4, 2, 5).reshape(b, n, nw * s, c)
        return attn.proj(out[:, :, :m])

    def mlp_into(self, x: Tensor) -> Tensor:
        """``x + mlp(norm2(x))`` written into ``x``, ``mlp.chunk_tokens`` tokens at a time."""
        b, h, w, c = x.shape
        flat = x.view(-1, c)
        chunk = self.mlp.chunk_tokens or flat.shape[0]
        for start in range(0, flat.shape[0], chunk):
            part = flat[start : start + chunk]
            update = self.mlp(self.norm2(part))
            if torch.promote_types(x.dtype, update.dtype) != x.dtype:  # autocast: widen once
                x = x.to(torch.promote_types(x.dtype, update.dtype))
                flat = x.view(-1, c)
                part = flat[start : start + chunk]
            part.add_(update)
            del update
        return x


def add_rows_(x: Tensor, r0: int, r1: int, update: Tensor, c0: int = 0) -> Tensor:
    """``x[:, r0:r1, c0 : c0 + w] += update`` in place, ``w`` the update's width (all columns
    when it has them all); returns ``x``. Where ``update`` has a wider dtype (autocast), ``x``
    is first converted to it (a copy), so the values are those of ``x + update`` either way."""
    wider = torch.promote_types(x.dtype, update.dtype)
    if wider != x.dtype:
        x = x.to(wider)
    x[:, r0:r1, c0 : c0 + update.shape[2]].add_(update)
    return x


def _residual_add(x: Tensor, update: Tensor, inplace: bool) -> Tensor:
    """``x + update``, written into ``x`` when allowed and the dtypes permit (autocast)."""
    if inplace and not torch.is_grad_enabled() and torch.promote_types(x.dtype, update.dtype) == x.dtype:
        return x.add_(update)
    return x + update


# Builds the block placed at a global-attention index: called with the keyword arguments of
# :class:`Block` (MEMatte's routed block accepts the same ones). ``None`` means plain Block.
GlobalBlockFactory = Callable[..., nn.Module]


class ViT(nn.Module):
    """Plain ViT backbone (ViTDet / ViTMatte) over RGB + trimap.

    Args:
        in_chans: input channels (4 = normalised RGB + trimap).
        patch_size: patch side (16).
        embed_dim: C.  depth: blocks.  num_heads: heads.  mlp_ratio: MLP ratio.
        qkv_bias: bias in qkv.  drop_path_rate: stochastic depth, linear in depth.
        window_size: window side for the window-attention blocks (14).
        global_block_indexes: blocks with global attention (2, 5, 8, 11).
        residual_block_indexes: blocks followed by a conv bottleneck (2, 5, 8, 11).
        use_rel_pos: decomposed rel-pos in every plain block (window and global).
        rel_pos_grid: grid side of the global blocks' rel-pos tables (32 = 512 px / 16).
        pretrain_img_size: image size of the absolute pos-embed (224 → 14×14 grid).
        pretrain_use_cls_token: the pos-embed has a class slot (dropped when resized).
        attn_impl: ``"sdpa"`` (fused kernels) or ``"naive"`` (paper-faithful N×N).
        global_block: factory for the blocks at ``global_block_indexes`` (MEMatte's routed
            block); ``None`` builds a plain global :class:`Block` (ViTMatte).
        chunk_tokens: tokens per pass at inference: MLP chunks, window-attention calls,
            router passes and conv row bands (the 4×-wide MLP hidden layer and the windows'
            qkv for that many tokens at a time, :class:`~mematte.models.layers.Mlp`,
            :meth:`Block.window_group`, :meth:`Block.set_chunk_tokens`); None = all at once,
            as the original code.
    """

    def __init__(
        self,
        in_chans: int = 4,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        window_size: int = 14,
        global_block_indexes: Sequence[int] = (2, 5, 8, 11),
        residual_block_indexes: Sequence[int] = (2, 5, 8, 11),
        use_rel_pos: bool = True,
        rel_pos_grid: int = 32,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        attn_impl: AttentionImpl = "sdpa",
        global_block: GlobalBlockFactory | None = None,
        chunk_tokens: int | None = INFERENCE_CHUNK_TOKENS,
    ) -> None:
        super().__init__()
        bad = [i for i in (*global_block_indexes, *residual_block_indexes) if not 0 <= i < depth]
        if bad:
            raise ValueError(f"block indexes {bad} out of range for depth={depth}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.depth = depth
        self.global_block_indexes = tuple(int(i) for i in global_block_indexes)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        grid = pretrain_img_size // patch_size
        self.pretrain_grid = grid
        self.num_prefix_tokens = 1 if pretrain_use_cls_token else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + self.num_prefix_tokens, embed_dim))
        # on the CPU explicitly: the net may be built under torch.device("meta") (shape checks)
        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList()
        for i in range(depth):
            is_global = i in self.global_block_indexes
            kwargs = dict(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                window_size=0 if is_global else window_size,
                use_rel_pos=use_rel_pos,
                rel_pos_grid=rel_pos_grid,
                use_residual_block=i in residual_block_indexes,
                attn_impl=attn_impl,
            )
            factory = global_block if (is_global and global_block is not None) else Block
            self.blocks.append(factory(**kwargs))
            self.blocks[-1].set_chunk_tokens(chunk_tokens)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def winograd(self) -> bool:
        """Whether fp32 CPU inference runs the conv residuals' 3×3 convs as Winograd
        convolutions (:meth:`ResBottleneck.add_into`)."""
        return winograd.winograd_switch(self, ResBottleneck)

    @winograd.setter
    def winograd(self, value: bool) -> None:
        winograd.winograd_switch(self, ResBottleneck, value)

    @property
    def routed_block_indexes(self) -> list[int]:
        """Indexes of the blocks that carry a router (empty for ViTMatte)."""
        return [i for i, b in enumerate(self.blocks) if getattr(b, "router", None) is not None]

    @property
    def routed_blocks(self) -> list[nn.Module]:
        """The blocks that carry a router, in depth order (empty for ViTMatte)."""
        return [self.blocks[i] for i in self.routed_block_indexes]

    def abs_pos(self, grid: tuple[int, int]) -> Tensor:
        """Absolute pos-embed resized to the token grid: (1, H, W, C).

        Bicubic without antialias, class slot dropped, as detectron2's ``get_abs_pos``.
        """
        h, w = grid
        pos = self.pos_embed[:, self.num_prefix_tokens :]
        if (h, w) != (self.pretrain_grid, self.pretrain_grid):
            pos = resample_abs_pos_embed(
                pos,
                new_size=[h, w],
                old_size=[self.pretrain_grid, self.pretrain_grid],
                num_prefix_tokens=0,
                interpolation="bicubic",
                antialias=False,
            )
        return pos.reshape(1, h, w, -1)

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding (B, in_chans, H, W) → (B, H/p, W/p, C). An input with a ``crop``
        method (:class:`~mematte.models.matting_net.LazyInput`) is embedded in strips of
        patch rows, each cropped on demand (patches do not overlap: the same values)."""
        if not hasattr(x, "crop"):
            return self.patch_embed(x)
        p = self.patch_size
        b, _, hp, wp = x.shape
        h, w = hp // p, wp // p
        chunk = self.blocks[0].band_tokens() if len(self.blocks) else h * w
        rows = max(1, chunk // max(1, b * w))
        tokens: Tensor | None = None
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            part = self.patch_embed(x.crop(r0 * p, r1 * p, 0, wp))
            if tokens is None:
                tokens = part.new_empty((b, h, w, part.shape[-1]))
            tokens[:, r0:r1] = part
            del part
        assert tokens is not None
        return tokens

    def forward(self, x: Tensor) -> BackboneOutput:
        """x: (B, in_chans, H, W), H and W multiples of the patch size → features (B, C, H/16, W/16).

        ``x`` may be a :class:`~mematte.models.matting_net.LazyInput` (inference)."""
        x = self.embed(x)  # (B, h, w, C)
        pos = self.abs_pos(x.shape[1:3]).to(x.dtype)
        if torch.is_grad_enabled():
            x = x + pos
        else:  # a contiguous grid, which the blocks then update in place (Block.forward_lean)
            x = torch.add(x, pos, out=x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, pos.dtype)))
        routing: list[RoutingInfo] = []
        inplace = not torch.is_grad_enabled()  # each block's input is dead once it returns
        for blk in self.blocks:
            x, info = blk(x, inplace=inplace)
            if info is not None:
                routing.append(info)
        return BackboneOutput(features=x.permute(0, 3, 1, 2).contiguous(), routing=routing)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: (B, C_in, H, W) → (B, H/p, W/p, C)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


__all__ = [
    "BackboneOutput",
    "Block",
    "PatchEmbed",
    "ResBottleneck",
    "RoutingInfo",
    "add_rows_",
    "ViT",
    "window_partition",
    "window_unpartition",
]
