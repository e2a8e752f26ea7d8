"""Small layers the ViT needs, in timm's semantics and parameter names, without importing timm.

``import timm`` loads torchvision, torch._dynamo and wandb (about 5 s on a CPU), which alone
would put ``predict.py --help`` and a first prediction over their start-up budgets. The five
pieces used here are a few lines each; they match ``timm.layers`` (1.0) exactly (values and
state-dict keys), and tests compare them with timm where it is installed.

:class:`Mlp` adds one thing timm's does not do: at inference (no autograd) it runs over
chunks of tokens, so its 4×-wide hidden layer never exists for the whole image at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Tokens per pass of the per-token layers at inference (MLP chunks, window-attention groups,
# router passes, row bands of the convs). Small enough that every band temporary is a few MiB:
# glibc then reuses the holes freed bands leave, where 4096-token bands (up to 24 MiB each)
# fragmented the heap. Measured, MEMatte-S at 2048², one core, first call in fresh processes:
# 239–268 MiB peak with 1024 (eleven runs), 248–378 MiB with 4096 (nine), and no difference in
# time that this machine resolves (docs/benchmark.md).
INFERENCE_CHUNK_TOKENS = 1024

__all__ = [
    "DropPath",
    "INFERENCE_CHUNK_TOKENS",
    "LayerNorm2d",
    "Mlp",
    "act_",
    "in_token_chunks",
    "resample_abs_pos_embed",
    "trunc_normal_",
]

def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> Tensor:
    """timm's ``trunc_normal_`` (absolute bounds ``a``, ``b``): torch's initialiser, which is
    the algorithm timm copies. Looked up at call time, so that
    :func:`mematte.checkpoints.netconfig.skipped_weight_init` reaches it too."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``): identity at eval or ``drop_prob=0``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, ...) → (B, ...), whole samples zeroed with probability ``drop_prob``."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's ``LayerNorm2d``, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return self.channels_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def channels_last(self, x: Tensor) -> Tensor:
        """The same normalisation of a channels-last (…, C) tensor (token layout)."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Mlp(nn.Module):
    """fc1 → GELU → fc2 (timm's ``Mlp`` without dropout; same ``fc1``/``fc2`` keys).

    Args:
        in_features: C.  hidden_features: hidden width (C·mlp_ratio).
        out_features: output width (default C).  act_layer: activation class.
        chunk_tokens: at inference (autograd off), tokens per fc1 → act → fc2 pass, so the
            hidden layer holds ``chunk_tokens × hidden`` elements, not ``N × hidden``
            (settable at run time; None = all tokens at once).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        chunk_tokens: int | None = INFERENCE_CHUNK_TOKENS,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.chunk_tokens = chunk_tokens

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., C) → (..., out_features)."""
        tokens = x.numel() // x.shape[-1]
        if torch.is_grad_enabled():
            return self.fc2(self.act(self.fc1(x)))
        if self.chunk_tokens is None or tokens <= self.chunk_tokens:
            return self.fc2(self._hidden(x))
        flat = x.reshape(tokens, x.shape[-1])
        out = in_token_chunks(lambda part: self.fc2(self._hidden(part)), flat, self.chunk_tokens)
        return out.view(*x.shape[:-1], self.fc2.out_features)

    def _hidden(self, x: Tensor) -> Tensor:
        """Inference: ``act(fc1(x))``, the GELU applied in place (one hidden buffer, not two)."""
        return act_(self.act, self.fc1(x))


def in_token_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_tokens: int | None) -> Tensor:
    """``fn(x)`` for a per-token ``fn`` ((..., n, C) → (..., n, D)), ``chunk_tokens`` tokens
    of the second-to-last axis at a time: the same values, with ``fn``'s temporaries for one
    chunk. None, or no more tokens than that: one call."""
    n = x.shape[-2]
    if chunk_tokens is None or n <= chunk_tokens:
        return fn(x)
    out: Tensor | None = None
    for start in range(0, n, chunk_tokens):
        y = fn(x[..., start : start + chunk_tokens, :])
        if out is None:
            out = y.new_empty((*x.shape[:-1], y.shape[-1]))
        out[..., start : start + chunk_tokens, :] = y
        del y
    assert out is not None
    return out


def act_(act: nn.Module, x: Tensor) -> Tensor:
    """``act(x)``, computed in place where ``act`` is a GELU (inference: ``x`` must not be
    needed afterwards). The same kernel as ``nn.GELU``, so the same values."""
    if type(act) is nn.GELU and not torch.is_grad_enabled():
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def resample_abs_pos_embed(
    posemb: Tensor,
    new_size: list[int],
    old_size: list[int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resize a (1, prefix + h·w, C) absolute pos-embed to ``new_size`` (timm's function).

    Interpolates in fp32 and casts back; prefix (class) tokens are kept in front.

    Returns:
        (1, prefix + H·W, C).
    """
    num_pos_tokens = posemb.shape[1]
    if old_size is None:
        side = int(math.isqrt(num_pos_tokens - num_prefix_tokens))
        old_size = [side, side]
    if num_pos_tokens == new_size[0] * new_size[1] + num_prefix_tokens and list(old_size) == list(new_size):
        return posemb
    prefix, posemb = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    embed_dim, dtype = posemb.shape[-1], posemb.dtype
    grid = posemb.float().reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=list(new_size), mode=interpolation, antialias=antialias)
    posemb = grid.permute(0, 2, 3, 1).reshape(1, -1, embed_dim).to(dtype)
    return torch.cat([prefix, posemb], dim=1) if num_prefix_tokens else posemb
