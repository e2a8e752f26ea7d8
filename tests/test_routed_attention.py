"""Training-time attention of MEMatte's routed blocks (``masked_dense_attention``).

Two formulas, each checked against a reference written out from its definition, in float64:

- ``official``: MEMatte's ``softmax_with_policy`` — ``w = exp(a − max_j a) · P`` (max over all
  keys), ``attn = (w + eps/N) / (Σ w + eps)``, ``P_ij = keep_j`` with the diagonal 1.
- ``exact``: ``Σ_j P_ij e^{a_ij} v_j / Σ_j P_ij e^{a_ij}``; for hard decisions the masked
  softmax ``a.masked_fill(~allowed, −inf).softmax(−1) @ v``.

Forward and gradients (q, k, v and the straight-through decisions) to 1e-5, at attention-logit
standard deviations 0.5, 4 and 8, in fp32 and under bf16/fp16 autocast; gradcheck in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mematte.models import ltrm as ltrms
from mematte.models import router as routers
from mematte.models.routed_block import POLICY_EPS, RoutedBlock, masked_dense_attention

B, N, D = 2, 64, 16
LOGIT_STDS = (0.5, 4.0, 8.0)
AUTOCAST = [None, torch.bfloat16, torch.float16]


def official_reference(q, k, v, keep, scale, eps=POLICY_EPS):
    """MEMatte's ``softmax_with_policy`` then ``@ v``, written as the official code does (4-D)."""
    attn = ((q * scale) @ k.transpose(-2, -1))[:, None]  # (B, 1 head, N, N)
    b, n = keep.shape
    attn_policy = keep.reshape(b, 1, 1, n)
    eye = torch.eye(n, dtype=attn_policy.dtype).view(1, 1, n, n)
    attn_policy = attn_policy + (1.0 - attn_policy) * eye
    max_att = torch.max(attn, dim=-1, keepdim=True)[0]
    attn = attn - max_att
    attn = attn.exp() * attn_policy
    attn = (attn + eps / n) / (attn.sum(dim=-1, keepdim=True) + eps)
    return attn[:, 0] @ v


def exact_reference(q, k, v, keep, scale):
    """``Σ_j P_ij e^{a_ij} v_j / Σ_j P_ij e^{a_ij}`` with no shift at all (float64 holds e^±60)."""
    logits = (q * scale) @ k.transpose(-2, -1)
    n = keep.shape[1]
    eye = torch.eye(n, dtype=keep.dtype)
    policy = keep[:, None, :] * (1 - eye) + eye
    weights = logits.exp() * policy
    return (weights @ v) / weights.sum(-1, keepdim=True)


def inputs(logit_std: float, seed: int = 0, n: int = N):
    """q, k, v (B, n, D), hard 0/1 decisions with straight-through gradients, and the scale
    that gives attention logits of standard deviation ``logit_std``."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, B, n, D, generator=gen, dtype=torch.float64).unbind(0)
    router_logits = torch.randn(B, n, 2, generator=gen, dtype=torch.float64)
    scale = logit_std / math.sqrt(D)
    return q, k, v, router_logits, scale


def straight_through(router_logits):
    """Hard decisions ``1[p0 ≥ p1]`` carrying the gradient of p0 (as Gumbel-softmax hard does)."""
    prob = router_logits.softmax(-1)[..., 0]
    hard = (prob >= 0.5).to(prob.dtype)
    return hard - prob.detach() + prob


def run(fn, q, k, v, router_logits, dtype):
    """Forward + backward of ``fn`` on leaf copies in ``dtype``; returns out and the grads."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v, router_logits)]
    keep = straight_through(leaves[3])
    out = fn(leaves[0], leaves[1], leaves[2], keep)
    # a fixed random cotangent, so every output element matters
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out.double() * cot).sum().backward()
    return out.detach().double(), [torch.zeros_like(t, dtype=torch.float64) if t.grad is None else t.grad.double()
                                   for t in leaves]


@pytest.mark.parametrize("autocast", AUTOCAST, ids=["fp32", "bf16-autocast", "fp16-autocast"])
@pytest.mark.parametrize("logit_std", LOGIT_STDS)
@pytest.mark.parametrize("softmax", ["official", "exact"])
def test_forward_and_gradients_match_the_formula(softmax, logit_std, autocast):
    q, k, v, router_logits, scale = inputs(logit_std)
    reference = official_reference if softmax == "official" else exact_reference
    ref_out, ref_grads = run(lambda *a: reference(*a, scale), q, k, v, router_logits, torch.float64)

    def ours(q_, k_, v_, keep):
        if autocast is None:
            return masked_dense_attention(q_, k_, v_, keep, scale, softmax=softmax)
        with torch.autocast("cpu", dtype=autocast):
            return masked_dense_attention(q_, k_, v_, keep, scale, softmax=softmax)

    out, grads = run(ours, q, k, v, router_logits, torch.float32)
    assert out.abs().max() > 0.1
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("q", "k", "v", "decisions"), grads, ref_grads):
        assert want.abs().max() > 1e-3, f"reference {name} gradient is ~0: the test would be vacuous"
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("logit_std", LOGIT_STDS)
def test_exact_equals_masked_softmax_values_and_q_k_v_gradients(logit_std):
    """The hard-decision masked softmax, autograd through ``masked_fill(−inf).softmax``: the
    case where clamping the shifted logits at 0 zeroed the gradient of each row's largest
    allowed logit."""
    q, k, v, router_logits, scale = inputs(logit_std, seed=1)
    keep = straight_through(router_logits).detach()
    allowed = keep.bool()[:, None, :] | torch.eye(N, dtype=torch.bool)

    def masked_softmax(q_, k_, v_, _keep):
        logits = (q_ * scale) @ k_.transpose(-2, -1)
        return logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v_

    ref_out, ref_grads = run(masked_softmax, q, k, v, router_logits, torch.float64)
    out, grads = run(lambda q_, k_, v_, keep_: masked_dense_attention(q_, k_, v_, keep_.detach(), scale,
                                                                      softmax="exact"),
                     q, k, v, router_logits, torch.float32)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads[:3], ref_grads[:3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_official_differs_from_exact_by_its_eps_terms_only():
    """At logit std 4 the eps terms move the output visibly but by far less than its scale."""
    q, k, v, router_logits, scale = inputs(4.0, seed=2)
    keep = straight_through(router_logits).detach().float()
    q, k, v = q.float(), k.float(), v.float()
    official = masked_dense_attention(q, k, v, keep, scale, softmax="official")
    exact = masked_dense_attention(q, k, v, keep, scale, softmax="exact")
    gap = (official - exact).abs().max().item()
    assert 1e-7 < gap < 1e-2
    with_zero_eps = masked_dense_attention(q, k, v, keep, scale, softmax="official", eps=0.0)
    torch.testing.assert_close(with_zero_eps, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("softmax", ["official", "exact"])
def test_gradcheck_float64(softmax):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 6, 4, generator=gen, dtype=torch.float64).mul(2).requires_grad_(True)
               for _ in range(3))
    # soft decisions exercise the policy's derivative everywhere (diagonal excluded by design)
    keep = torch.rand(1, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda *t: masked_dense_attention(*t, scale=0.7, softmax=softmax), (q, k, v, keep)
    )


def test_own_decision_gets_no_gradient_through_its_own_row():
    """The diagonal is 1 whatever the decision (official ``p + (1 − p)·I``)."""
    q, k, v = torch.randn(3, 1, 1, 4, dtype=torch.float64).unbind(0)  # one token: only the diagonal
    keep = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    for softmax in ("official", "exact"):
        masked_dense_attention(q, k, v, keep, 0.5, softmax=softmax).sum().backward()
        assert keep.grad.abs().max() == 0


def test_no_gradient_killing_clamp_in_the_routed_attention():
    """Every allowed logit, including each row's largest, passes gradient to q and k."""
    torch.manual_seed(4)
    q = torch.randn(1, 8, 4, requires_grad=True)
    k, v = torch.randn(2, 1, 8, 4).unbind(0)
    keep = torch.ones(1, 8)
    out = masked_dense_attention(q, k, v, keep, 1.0, softmax="exact")
    reference = ((q * 1.0) @ k.transpose(-2, -1)).softmax(-1) @ v
    (dq,) = torch.autograd.grad(out.sum() * 0 + (out * v.mean(1, keepdim=True)).sum(), q)
    (dq_ref,) = torch.autograd.grad((reference * v.mean(1, keepdim=True)).sum(), q)
    torch.testing.assert_close(dq, dq_ref, rtol=1e-5, atol=1e-6)


def test_routed_block_uses_the_configured_formula_and_rejects_unknown_ones():
    def block(**kwargs):
        return RoutedBlock(24, num_heads=2, router=routers.LocalGlobalRouter, ltrm=ltrms.ConvTokenRefiner,
                           **kwargs).train()

    assert block().masked_softmax == "official"
    torch.manual_seed(5)
    y, refined = torch.randn(1, 20, 24) * 4, torch.randn(1, 20, 24)
    decision = (torch.rand(1, 20) > 0.6).float()
    b_official, b_exact = block(), block(masked_softmax="exact")
    b_exact.load_state_dict(b_official.state_dict())
    official = b_official.attend_dense(y, decision, refined)
    exact = b_exact.attend_dense(y, decision, refined)
    gathered = b_exact.eval().attend_gathered(y, decision, refined)
    torch.testing.assert_close(exact, gathered, rtol=1e-5, atol=1e-5)
    assert not torch.equal(official, exact)
    with pytest.raises(ValueError, match="masked_softmax"):
        block(masked_softmax="sparse")
    with pytest.raises(ValueError, match="softmax"):
        masked_dense_attention(y, y, y, decision, 1.0, softmax="sparse")


def test_gumbel_straight_through_reaches_the_router_through_keys():
    """Dropped keys' decisions get gradients (the router learns which keys to add)."""
    torch.manual_seed(6)
    q, k, v = torch.randn(3, 1, 12, 8).unbind(0)
    logits = torch.randn(1, 12, 2, requires_grad=True)
    keep = F.gumbel_softmax(logits, hard=True)[..., 0]
    for softmax in ("official", "exact"):
        logits.grad = None
        masked_dense_attention(q, k, v, keep, 0.5, softmax=softmax).square().sum().backward(retain_graph=True)
        dropped = keep.detach() == 0
        assert (logits.grad[0, dropped[0]].abs().sum(-1) > 0).all()
