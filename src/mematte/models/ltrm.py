"""Lightweight token refinement modules (LTRM): the cheap path for tokens not routed to attention.

Each refiner maps the routed block's *un-normalised* input grid (B, H, W, C) to an update of
the same shape; the routed block blends it in for the tokens its router sends away from
global attention. Refiners see the whole grid because the depthwise conv needs neighbours.

Module names of :class:`ConvTokenRefiner` follow the official MEMatte ``efficient_block``
(``fc1``, ``dwconv``, ``fc2``, ``eca.conv``) so official checkpoints map onto it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mematte.models.layers import act_


class TokenRefiner(nn.Module):
    """Base class: ``forward(x (B, H, W, C)) -> (B, H, W, C)``."""

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class EfficientChannelAttention(nn.Module):
    """ECA gate: channel weights from a 1-D conv over the globally pooled channels.

    ``g = sigmoid(conv1d_k(GAP(t)))``; returns ``t + t·g`` (with shortcut) or ``t·g``.

    Args:
        kernel_size: 1-D conv width over the channel axis (5 in MEMatte).
        shortcut: keep the identity term (the paper's LTRM does).
    """

    def __init__(self, kernel_size: int = 5, shortcut: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.shortcut = shortcut

    def gate(self, t: Tensor) -> Tensor:
        """Channel weights of t (B, H, W, C): (B, C)."""
        pooled = t.mean(dim=(1, 2))  # (B, C)
        return torch.sigmoid(self.conv(pooled.unsqueeze(1))).squeeze(1)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B, H, W, C) → (B, H, W, C)."""
        gated = t * self.gate(t)[:, None, None, :]
        return t + gated if self.shortcut else gated

    def apply_in_bands_(self, t: Tensor, band_rows: int) -> Tensor:
        """Inference: :meth:`forward` written into ``t``, ``band_rows`` rows at a time (one
        band's product exists at a time; the same values). Returns ``t``."""
        gate = self.gate(t)[:, None, None, :]
        for r0 in range(0, t.shape[1], band_rows):
            part = t[:, r0 : r0 + band_rows]
            gated = part * gate
            if self.shortcut:
                part.add_(gated)
            else:
                part.copy_(gated)
            del gated
        return t


class ConvTokenRefiner(TokenRefiner):
    """MEMatte's LTRM and its ablations: fc → GELU → depthwise conv → GELU → fc → ECA.

    Args:
        dim: channels C.
        hidden_ratio: hidden width = C·ratio (2).
        kernel_size: depthwise conv size (5).
        dwconv: use the depthwise conv (off: ``eca_no_dwconv``).
        eca: use the ECA gate (off: ``conv_no_eca``).
        eca_shortcut: keep the gate's identity term (off: ``conv_no_shortcut``).
        eca_kernel: the gate's 1-D conv width.
    """

    def __init__(
        self,
        dim: int,
        hidden_ratio: float = 2.0,
        kernel_size: int = 5,
        dwconv: bool = True,
        eca: bool = True,
        eca_shortcut: bool = True,
        eca_kernel: int = 5,
    ) -> None:
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = nn.GELU()
        self.dwconv = (
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
            if dwconv
            else None
        )
        self.act2 = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.eca = EfficientChannelAttention(eca_kernel, shortcut=eca_shortcut) if eca else None

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → (B, H, W, C)."""
        t = self.ungated(x)
        return self.eca(t) if self.eca is not None else t

    def ungated(self, x: Tensor, rows: slice = slice(None)) -> Tensor:
        """fc1 → GELU → depthwise conv → GELU → fc2 for (B, H, W, C) ``x``, before the gate;
        ``rows``: the output rows to keep (the others only feed the conv). Without autograd
        the GELUs run in place."""
        t = act_(self.act1, self.fc1(x))
        if self.dwconv is not None:
            t = self.dwconv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(act_(self.act2, t[:, rows]) if self.dwconv is not None else t[:, rows])

    def forward_in_bands(self, x: Tensor, band_rows: int) -> Tensor:
        """Inference: :meth:`forward` in bands of ``band_rows`` rows, so the 2C-wide layers
        exist for one band at a time.

        fc1, the GELUs, fc2 and the gate's product are per token and the depthwise conv reads
        ``kernel_size // 2`` rows on each side, so each band reads that many context rows and
        keeps its own; the gate averages the whole fc2 output, so it is applied once that
        exists. The same layers on the same values as :meth:`forward`.
        """
        b, h, w, _ = x.shape
        halo = self.dwconv.padding[0] if self.dwconv is not None else 0
        out: Tensor | None = None
        for r0 in range(0, h, band_rows):
            r1 = min(r0 + band_rows, h)
            lo, hi = max(0, r0 - halo), min(h, r1 + halo)
            t = self.ungated(x[:, lo:hi], slice(r0 - lo, r1 - lo))
            if out is None:
                out = t.new_empty((b, h, w, t.shape[-1]))
            out[:, r0:r1] = t
            del t
        assert out is not None
        return self.eca.apply_in_bands_(out, band_rows) if self.eca is not None else out


class MLPTokenRefiner(TokenRefiner):
    """Ablation "ALR": a per-token MLP, LN → Linear C→2C → GELU → LN → Linear 2C→C.

    Args:
        dim: channels C.
        hidden_ratio: hidden width = C·ratio (2).
    """

    def __init__(self, dim: int, hidden_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.net = nn.Sequential(
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, eps=1e-6),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → (B, H, W, C)."""
        return self.net(x)


class ZeroTokenRefiner(TokenRefiner):
    """Ablation "no LTRM": unrouted tokens skip the token-mixing branch (update = 0).

    Args:
        dim: channels C (unused; part of the refiner signature).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) → zeros (B, H, W, C)."""
        return torch.zeros_like(x)


__all__ = [
    "ConvTokenRefiner",
    "EfficientChannelAttention",
    "MLPTokenRefiner",
    "TokenRefiner",
    "ZeroTokenRefiner",
]
