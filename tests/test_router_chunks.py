"""Routers at inference in chunks of tokens (``Router.chunk_tokens``): the same log-probs as
one pass over all tokens, with the per-token layers never seeing more than a chunk."""

from __future__ import annotations

import pytest
import torch

from mematte.models.router import LocalGlobalRouter, LocalRouter, SERouter, SmallRouter, TinyRouter

ROUTERS = [LocalGlobalRouter, LocalRouter, SERouter, SmallRouter, TinyRouter]


def widest_linear_call(router: torch.nn.Module) -> list[int]:
    """Token counts seen by the router's first Linear (records into the returned list)."""
    seen: list[int] = []
    first = next(m for m in router.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-2]))
    return seen


@pytest.mark.parametrize("cls", ROUTERS)
@pytest.mark.parametrize("chunk", [8, 37, None])  # chunks with a short last one; exactly N; off
def test_chunked_router_equals_one_pass(cls, chunk):
    torch.manual_seed(0)
    router = cls(32).eval()
    x = torch.randn(2, 37, 32) * 3
    with torch.enable_grad():  # training-style pass: always one call on all tokens
        whole = router(x).detach()
    router.chunk_tokens = chunk
    seen = widest_linear_call(router)
    with torch.inference_mode():
        chunked = router(x)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert max(seen) == (37 if chunk in (None, 37) else chunk)
    assert sum(seen) >= 37


def test_routers_are_one_call_while_training():
    router = LocalGlobalRouter(32).train()
    router.chunk_tokens = 4
    seen = widest_linear_call(router)
    router(torch.randn(1, 20, 32, requires_grad=True)).sum().backward()
    assert seen == [20]


def test_chunked_context_router_keeps_a_half_width_map_not_the_full_one():
    """The local/global router keeps only h's local half for all tokens (B, N, C/2): the
    C-wide embedding exists for one chunk at a time."""
    router = LocalGlobalRouter(64).eval()
    router.chunk_tokens = 16
    widths: list[tuple[int, ...]] = []
    router.in_conv.register_forward_hook(lambda _m, _a, out: widths.append(tuple(out.shape)))
    with torch.inference_mode():
        router(torch.randn(1, 100, 64))
    assert widths and all(w[1] <= 16 for w in widths)


@pytest.mark.parametrize("chunk", [None, 96])
def test_vit_chunk_tokens_reach_the_routers(chunk):
    """``ViT(chunk_tokens=...)`` sets every pass size, the routers' included (None: the
    original code's one pass, as the paper-faithful bench model)."""
    import functools

    from mematte.models.ltrm import ConvTokenRefiner
    from mematte.models.routed_block import RoutedBlock
    from mematte.models.vit import ViT

    block = functools.partial(RoutedBlock, router=LocalGlobalRouter, ltrm=ConvTokenRefiner)
    vit = ViT(embed_dim=32, depth=2, num_heads=2, window_size=4, global_block_indexes=(1,),
              residual_block_indexes=(), rel_pos_grid=8, global_block=block, chunk_tokens=chunk)
    routed = vit.blocks[1]
    assert routed.router.chunk_tokens == chunk
    assert routed.mlp.chunk_tokens == chunk and routed.window_chunk_tokens == chunk
    assert vit.blocks[0].mlp.chunk_tokens == chunk
