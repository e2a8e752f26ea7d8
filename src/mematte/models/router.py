"""Token routers of MEMatte: score every token for global attention vs. the cheap LTRM path.

Every router maps the block input ``x`` (B, N, C) — before the block's first LayerNorm — to
log-probabilities (B, N, 2); index 0 = "to global attention", index 1 = "to the LTRM".
Turning scores into decisions (straight-through Gumbel, argmax, top-K) is the routed block's
job (:mod:`mematte.models.routed_block`), so every router here is interchangeable.

Module names of :class:`LocalGlobalRouter` follow the official MEMatte code
(``in_conv.{0,1}``, ``out_conv.{0,2,4}``) so official checkpoints map onto it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mematte.models.layers import INFERENCE_CHUNK_TOKENS, in_token_chunks


class Router(nn.Module):
    """Base class: ``forward(x (B, N, C)) -> log_probs (B, N, 2)``.

    Attributes:
        learned: False for routers without parameters (``random``): their decisions are
            fixed by construction and the keep-ratio loss cannot move them.
    """

    learned: bool = True
    # inference (autograd off): tokens per pass of the per-token layers, so their C-wide
    # outputs exist for that many tokens at a time, not for the whole (B, N, C) map; None = all
    # at once. The ViT sets it from its chunk_tokens (RoutedBlock.set_chunk_tokens).
    chunk_tokens: int | None = INFERENCE_CHUNK_TOKENS

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def token_chunks(self, n: int) -> list[slice]:
        """The passes over N tokens: one slice while training or when N ≤ ``chunk_tokens``."""
        step = self.chunk_tokens
        if torch.is_grad_enabled() or step is None or n <= step:
            return [slice(0, n)]
        return [slice(s, min(s + step, n)) for s in range(0, n, step)]

    def per_token(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn(x)`` for a per-token ``fn`` ((B, n, C) → (B, n, D)), ``chunk_tokens`` tokens at
        a time at inference, one call while training
        (:func:`~mematte.models.layers.in_token_chunks`)."""
        return in_token_chunks(fn, x, None if torch.is_grad_enabled() else self.chunk_tokens)


def _embed_in_chunks(
    in_conv: nn.Module, x: Tensor, chunks: Sequence[slice], keep: int
) -> tuple[Tensor | None, Tensor]:
    """Inference: ``h = in_conv(x)`` a chunk of tokens at a time, for routers that use ``h``'s
    mean over the image's tokens.

    Args:
        in_conv: per-token (B, n, C) → (B, n, D).  x: (B, N, C).  chunks: token slices.
        keep: the first ``keep`` channels of ``h`` are kept for every token (0: none).

    Returns:
        ``h[..., :keep]`` (B, N, keep) or None, and the mean over tokens of ``h[..., keep:]``
        (B, 1, D − keep) in ``h``'s dtype (summed in fp32).
    """
    b, n, _ = x.shape
    kept: Tensor | None = None
    total: Tensor | None = None
    dtype = x.dtype
    for part in chunks:
        h = in_conv(x[:, part])
        if total is None:
            total = torch.zeros((b, 1, h.shape[-1] - keep), dtype=torch.float32, device=h.device)
            kept = h.new_empty((b, n, keep)) if keep else None
            dtype = h.dtype
        if kept is not None:
            kept[:, part] = h[..., :keep]
        total += h[..., keep:].sum(dim=1, keepdim=True, dtype=torch.float32)
        del h
    assert total is not None
    return kept, (total / n).to(dtype)


def _head(dim: int) -> nn.Sequential:
    """The scoring MLP C → C/2 → C/4 → 2 with GELU, then log-softmax (``out_conv``)."""
    return nn.Sequential(
        nn.Linear(dim, dim // 2),
        nn.GELU(),
        nn.Linear(dim // 2, dim // 4),
        nn.GELU(),
        nn.Linear(dim // 4, 2),
        nn.LogSoftmax(dim=-1),
    )


def _embed(dim: int) -> nn.Sequential:
    """Per-token embedding LN → Linear C→C → GELU (``in_conv``)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())


class LocalGlobalRouter(Router):
    """The paper's router: each token scored from its own features and the image's context.

    ``h = GELU(Linear(LN(x)))``; the first half of ``h``'s channels stays per token (local),
    the second half is averaged over the image's tokens (global); the concatenation goes
    through the scoring MLP C → C/2 → C/4 → 2.

    Args:
        dim: channels C (even).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"LocalGlobalRouter needs dim divisible by 4, got {dim}")
        self.in_conv = _embed(dim)
        self.out_conv = _head(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) → log-probs (B, N, 2)."""
        chunks = self.token_chunks(x.shape[1])
        if len(chunks) == 1:
            h = self.in_conv(x)
            half = h.shape[-1] // 2
            local = h[..., :half]
            context = h[..., half:].mean(dim=1, keepdim=True).expand(-1, h.shape[1], -1)
            return self.out_conv(torch.cat([local, context], dim=-1))
        # inference in chunks: the local half of h kept (B, N, C/2), the global half averaged
        kept, context = _embed_in_chunks(self.in_conv, x, chunks, self.in_conv[1].out_features // 2)
        assert kept is not None
        return self.per_token(
            lambda local: self.out_conv(torch.cat([local, context.expand(-1, local.shape[1], -1)], dim=-1)), kept)


class LocalRouter(LocalGlobalRouter):
    """Ablation: the paper's layers without the split/average (each token scored on its own).

    Args:
        dim: channels C (divisible by 4).
    """

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) → log-probs (B, N, 2)."""
        return self.per_token(lambda t: self.out_conv(self.in_conv(t)), x)


class SmallRouter(Router):
    """Ablation: LN → Linear C→C/2 → GELU → Linear C/2→2 → log-softmax, per token.

    Args:
        dim: channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) → log-probs (B, N, 2)."""
        return self.per_token(self.net, x)


class TinyRouter(Router):
    """Ablation: LN → Linear C→2 → log-softmax (a linear probe per token).

    Args:
        dim: channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) → log-probs (B, N, 2)."""
        return self.per_token(self.net, x)


class SERouter(Router):
    """Ablation: image context as a squeeze-and-excitation gate instead of concatenation.

    ``h = GELU(Linear(LN(x)))``; a channel gate ``sigmoid(MLP(mean_N h))`` computed from the
    image's average token rescales every token's ``h`` before the scoring MLP.

    Args:
        dim: channels C.
        reduction: bottleneck ratio of the gate MLP.
    """

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"SERouter needs dim divisible by 4, got {dim}")
        self.in_conv = _embed(dim)
        self.gate = nn.Sequential(
            nn.Linear(dim, dim // reduction),
            nn.GELU(),
            nn.Linear(dim // reduction, dim),
            nn.Sigmoid(),
        )
        self.out_conv = _head(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) → log-probs (B, N, 2)."""
        chunks = self.token_chunks(x.shape[1])
        if len(chunks) == 1:
            h = self.in_conv(x)
            return self.out_conv(h * self.gate(h.mean(dim=1, keepdim=True)))
        # inference in chunks: h averaged in a first pass, then recomputed per chunk (one
        # C-wide linear more, instead of keeping h for every token)
        _, mean = _embed_in_chunks(self.in_conv, x, chunks, 0)
        gate = self.gate(mean)
        return self.per_token(lambda t: self.out_conv(self.in_conv(t) * gate), x)


class RandomRouter(Router):
    """Ablation baseline: a uniformly random ``fraction`` of each image's tokens.

    Exactly ``round(fraction · N)`` tokens (at least one) get log-prob 0 for global attention,
    the others a log-prob far below any Gumbel perturbation, so the routed block's sampling,
    argmax and top-K all return this random subset. No parameters; a fresh draw per call
    (reproducible under a fixed seed).

    Args:
        dim: channels C (unused; part of the router signature).
        fraction: share of tokens sent to global attention.
    """

    learned = False
    # Log-prob of the side not taken: Gumbel noise in fp32 stays well inside ±100.
    _FAR = 1.0e4

    def __init__(self, dim: int, fraction: float = 0.25) -> None:
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"RandomRouter fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) → log-probs (B, N, 2) with a random exact-size subset on index 0."""
        b, n, _ = x.shape
        k = max(1, round(self.fraction * n))
        order = torch.rand(b, n, device=x.device).argsort(dim=1)
        chosen = torch.zeros(b, n, dtype=torch.bool, device=x.device)
        chosen.scatter_(1, order[:, :k], True)
        far = torch.full((b, n), -self._FAR, dtype=x.dtype, device=x.device)
        zero = torch.zeros_like(far)
        logp_global = torch.where(chosen, zero, far)
        logp_ltrm = torch.where(chosen, far, zero)
        return torch.stack([logp_global, logp_ltrm], dim=-1)

    def extra_repr(self) -> str:
        return f"fraction={self.fraction}"


__all__ = [
    "LocalGlobalRouter",
    "LocalRouter",
    "RandomRouter",
    "Router",
    "SERouter",
    "SmallRouter",
    "TinyRouter",
]
