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

    def forward(self, t: Tensor) -> Tensor:
        """t: (B, H, W, C) → (B, H, W, C)."""
        pooled = t.mean(dim=(1, 2))  # (B, C)
        gate = torch.sigmoid(self.conv(pooled.unsqueeze(1))).squeeze(1)  # (B, C)
        gated = t * gate[:, None, None, :]
        return t + gated if self.shortcut else gated


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
        t = self.act1(self.fc1(x))
        if self.dwconv is not None:
            t = self.act2(self.dwconv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        t = self.fc2(t)
        return self.eca(t) if self.eca is not None else t


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
