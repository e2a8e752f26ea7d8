"""MEMatte's routed global block: router → global attention for some tokens, LTRM for the rest.

    decision d = route(router(x))                      (B, N), 1 = global attention
    mixed      = d · Attn(LN(x)) + (1 − d) · LTRM(x)    then the usual MLP and conv residual

Two exact ways to compute ``mixed`` for the same hard decisions:

- **training** (:meth:`RoutedBlock.attend_dense`): attention over all N tokens with a key
  policy — each query attends to the routed keys and itself — softmax in fp32. The policy is
  the straight-through decision itself, so the router gets gradients through keys as well as
  through the blend. By default the softmax is the official ``softmax_with_policy`` formula
  (:func:`masked_dense_attention`, ``masked_softmax="official"``), whose eps terms leave
  dropped keys a tiny weight; ``"exact"`` is the plain masked softmax, equal to the gathered
  path to rounding.
- **inference** (:meth:`RoutedBlock.attend_gathered`): gather the K routed tokens, run
  attention on them alone (``scaled_dot_product_attention``: linear memory in K), scatter the
  result over the LTRM output. Unrouted tokens never enter attention.

Routed global blocks carry no relative position bias (docs/method.md, MEMatte); ViTMatte teachers keep it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mematte.models.attention import AttentionImpl, naive_attention
from mematte.models.ltrm import ConvTokenRefiner, TokenRefiner
from mematte.models.router import Router
from mematte.models.vit import Block, RoutingInfo

Selection = Literal["gumbel", "topk"]
SELECTIONS: tuple[str, ...] = ("gumbel", "topk")
InferenceRule = Literal["argmax", "expected"]
INFERENCE_RULES: tuple[str, ...] = ("argmax", "expected")


def routing_scores(log_probs: Tensor) -> Tensor:
    """Preference for global attention, ``logp0 − logp1``: (B, N, 2) → (B, N)."""
    return log_probs[..., 0] - log_probs[..., 1]


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean (B, N) mask of each row's ``k`` highest scores (ties → lower index)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, scores.topk(k, dim=1, sorted=False).indices, True)
    return mask


def keep_count(num_tokens: int, keep_ratio: float) -> int:
    """Tokens a fixed ``keep_ratio`` keeps out of ``num_tokens`` (at least one)."""
    return min(num_tokens, max(1, round(keep_ratio * num_tokens)))


def argmax_rule(log_probs: Tensor) -> Tensor:
    """The paper's inference rule: tokens with p(global) ≥ 0.5, (B, N, 2) → (B, N) bool.

    Score ``logp0 − logp1 ≥ 0``; ties go to global attention, as argmax picks the first index.
    No ``max_tokens`` cap (that is the block's, see :meth:`RoutedBlock.decide`).
    """
    return routing_scores(log_probs.float()) >= 0


def expected_rule(log_probs: Tensor) -> Tensor:
    """Each image's top ``round(Σ_n p(global))`` tokens by score, (B, N, 2) → (B, N) bool.

    The count the Gumbel sampling of training keeps on average. No ``max_tokens`` cap.
    """
    log_probs = log_probs.float()
    scores = routing_scores(log_probs)
    counts = log_probs[..., 0].exp().sum(dim=1).round()  # (B,)
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return ranks < counts[:, None]


INFERENCE_RULE_FNS: dict[str, Callable[[Tensor], Tensor]] = {"argmax": argmax_rule, "expected": expected_rule}
"""The inference rules by name (keys = :data:`INFERENCE_RULES`): log-probs (B, N, 2) → (B, N) bool."""


MaskedSoftmax = Literal["official", "exact"]
MASKED_SOFTMAXES: tuple[str, ...] = ("official", "exact")
# Official MEMatte's `softmax_with_policy` stabiliser (added to the weights and their sum)
POLICY_EPS = 1e-6


def policy_matrix(keep: Tensor) -> Tensor:
    """Key policy of every query, ``P_ij = keep_j`` with the diagonal fixed at 1: (B, N) → (B, N, N).

    Written as the official code does, ``p + (1 − p) · I``, so a token always sees itself and
    its own decision gets no gradient through its own attention row.
    """
    p = keep[:, None, :] if keep.is_floating_point() else keep.float()[:, None, :]
    eye = torch.eye(keep.shape[1], dtype=p.dtype, device=keep.device)
    return p + (1.0 - p) * eye


def masked_dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: Tensor,
    scale: float,
    softmax: MaskedSoftmax = "official",
    eps: float = POLICY_EPS,
) -> Tensor:
    """Training-time attention where each query sees the kept keys and itself.

    With ``a = scale · q kᵀ`` and the policy ``P`` of :func:`policy_matrix`:

    - ``"official"`` — MEMatte's ``softmax_with_policy`` (the formula the paper trained with):
      ``w = exp(a − max_j a) · P`` (max over *all* keys, not detached), then
      ``attn = (w + eps/N) / (Σ_j w + eps)``. Dropped keys keep a weight of ``eps/N`` relative
      to the row sum; the eps terms also shape the router's straight-through gradient.
    - ``"exact"`` — the masked softmax ``out_i = Σ_j P_ij e^{a_ij} v_j / Σ_j P_ij e^{a_ij}``:
      for a hard 0/1 ``keep``, exactly softmax over the allowed keys (what the gathered
      inference path computes), and differentiable in ``keep`` for the straight-through
      decisions of dropped keys. The shift by the row maximum over all keys is a constant of
      the ratio (detached; every exponent is ≤ 0, so nothing overflows and nothing is
      clamped).

    Both run in fp32, also under autocast. Gradients flow to q, k, v and ``keep``.

    Args:
        q, k, v: (B, N, D) (B may fold heads).
        keep: (B, N) decisions in {0, 1} (straight-through gradients allowed).
        scale: logit scale.
        softmax: ``"official"`` or ``"exact"``.
        eps: the official formula's stabiliser.

    Returns:
        (B, N, D) in q's dtype.
    """
    if softmax not in MASKED_SOFTMAXES:
        raise ValueError(f"Unknown masked softmax {softmax!r}; choose one of {list(MASKED_SOFTMAXES)}")
    n = q.shape[1]
    # fp32 even under autocast, which would run these matmuls in fp16/bf16 (float64 stays
    # float64, for gradcheck)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q.to(compute) * scale) @ k.to(compute).transpose(-2, -1)  # (B, N, N)
        policy = policy_matrix(keep).to(compute)
        row_max = logits.max(dim=-1, keepdim=True).values
        if softmax == "official":
            weights = torch.exp(logits - row_max) * policy
            attn = (weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)
            out = attn @ v.to(compute)
        else:
            weights = torch.exp(logits - row_max.detach()) * policy
            out = (weights @ v.to(compute)) / weights.sum(dim=-1, keepdim=True)
    return out.to(q.dtype)


class RoutedBlock(Block):
    """Global-attention block with a token router and an LTRM (MEMatte).

    Accepts :class:`~mematte.models.vit.Block`'s keyword arguments so that it can be the
    ViT's ``global_block`` factory, plus the routing parts.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias, drop_path, use_residual_block: as ``Block``.
        window_size: must be 0 (routing replaces global attention).
        use_rel_pos, rel_pos_grid: accepted for the factory signature and ignored: routed
            blocks have no relative position bias (docs/method.md, MEMatte).
        attn_impl: attention over the gathered tokens at inference, ``"sdpa"`` (linear memory)
            or ``"naive"`` (K×K matrix, as the official code).
        router: factory ``router(dim) -> Router``.
        ltrm: factory ``ltrm(dim) -> TokenRefiner``.
        selection: ``"gumbel"`` — learned, adaptive count (straight-through Gumbel-softmax in
            training, argmax at inference) — or ``"topk"`` — a fixed ``keep_ratio`` of each
            image's tokens by score, training and inference.
        keep_ratio: share of tokens kept by ``"topk"`` (settable at run time).
        max_tokens: inference cap on routed tokens per image, the top-K by score; None = no
            cap (settable at run time).
        gumbel_tau: Gumbel-softmax temperature.
        inference: how ``"gumbel"`` blocks decide at inference: ``"argmax"`` (the paper's:
            tokens with p(global) ≥ 0.5) or ``"expected"`` — each image's top-K by score with
            ``K = round(Σ_n p(global))``, the count training samples on average. Routers that
            are not yet confident (p below 0.5 everywhere, as after short training) route no
            token under argmax; ``expected`` keeps the trained share (settable at run time).
        masked_softmax: training-time attention of :func:`masked_dense_attention`:
            ``"official"`` (MEMatte's ``softmax_with_policy``, what the paper trained with) or
            ``"exact"`` (the masked softmax; equals the gathered inference path).
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
        *,
        router: Callable[[int], Router],
        ltrm: Callable[[int], TokenRefiner],
        selection: Selection = "gumbel",
        keep_ratio: float = 0.25,
        max_tokens: int | None = None,
        gumbel_tau: float = 1.0,
        inference: InferenceRule = "argmax",
        masked_softmax: MaskedSoftmax = "official",
    ) -> None:
        if window_size:
            raise ValueError("RoutedBlock replaces a global block: window_size must be 0")
        if selection not in SELECTIONS:
            raise ValueError(f"Unknown selection={selection!r}; choose one of {list(SELECTIONS)}")
        if inference not in INFERENCE_RULES:
            raise ValueError(f"Unknown inference={inference!r}; choose one of {list(INFERENCE_RULES)}")
        if masked_softmax not in MASKED_SOFTMAXES:
            raise ValueError(
                f"Unknown masked_softmax={masked_softmax!r}; choose one of {list(MASKED_SOFTMAXES)}"
            )
        super().__init__(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path=drop_path,
            window_size=0,
            use_rel_pos=False,
            use_residual_block=use_residual_block,
            attn_impl=attn_impl,
        )
        self.router = router(dim)
        self.ltrm = ltrm(dim)
        self.selection = selection
        self.keep_ratio = float(keep_ratio)
        self.max_tokens = max_tokens
        self.gumbel_tau = float(gumbel_tau)
        self.inference = inference
        self.masked_softmax = masked_softmax

    def set_chunk_tokens(self, chunk_tokens: int | None) -> None:
        """As :meth:`Block.set_chunk_tokens`, and the router's passes too."""
        super().set_chunk_tokens(chunk_tokens)
        self.router.chunk_tokens = chunk_tokens

    def extra_repr(self) -> str:
        return (
            f"selection={self.selection}, keep_ratio={self.keep_ratio}, max_tokens="
            f"{self.max_tokens}, gumbel_tau={self.gumbel_tau}, inference={self.inference}, "
            f"masked_softmax={self.masked_softmax}"
        )

    # ------------------------------------------------------------------ routing
    def decide(self, log_probs: Tensor) -> Tensor:
        """Hard decisions from router log-probs: (B, N, 2) → (B, N) float in {0, 1}.

        Training decisions carry straight-through gradients to the log-probs.
        """
        log_probs = log_probs.float()
        scores = routing_scores(log_probs)
        n = scores.shape[1]
        if self.selection == "topk":
            hard = top_k_mask(scores, keep_count(n, self.keep_ratio))
            if self.training:
                prob = log_probs[..., 0].exp()
                return hard.float() - prob.detach() + prob
            return self._cap(hard, scores).float()
        if self.training:
            return F.gumbel_softmax(log_probs, tau=self.gumbel_tau, hard=True, dim=-1)[..., 0]
        return self._cap(INFERENCE_RULE_FNS[self.inference](log_probs), scores).float()

    def _cap(self, hard: Tensor, scores: Tensor) -> Tensor:
        """Apply ``max_tokens``: keep the top-K by score where an image routes more."""
        if self.max_tokens is None or int(hard.sum(dim=1).max()) <= self.max_tokens:
            return hard
        capped = top_k_mask(scores.masked_fill(~hard, float("-inf")), self.max_tokens)
        return capped & hard

    # ------------------------------------------------------------------ the two paths
    def attend_dense(self, y: Tensor, decision: Tensor, refined: Tensor) -> Tensor:
        """Training path: masked attention over all tokens, blended with the LTRM output.

        Args:
            y: (B, N, C) normalised tokens.
            decision: (B, N) hard decisions (straight-through gradients allowed).
            refined: (B, N, C) LTRM output.

        Returns:
            (B, N, C) ``d · Attn + (1 − d) · LTRM``.
        """
        b = y.shape[0]
        q, k, v = self.attn.qkv_heads(y)
        keep = decision.repeat_interleave(self.attn.num_heads, dim=0)  # (B·heads, N)
        out = masked_dense_attention(q, k, v, keep, self.attn.scale, softmax=self.masked_softmax)
        attended = self.attn.merge_heads(out, b)
        d = decision[..., None].to(attended.dtype)
        return d * attended + (1.0 - d) * refined

    def _attention(self, tokens: Tensor) -> Tensor:
        """Plain global attention over gathered tokens: (B, K, C) → (B, K, C)."""
        b = tokens.shape[0]
        q, k, v = self.attn.qkv_heads(tokens)
        if self.attn.attn_impl == "naive":
            out = naive_attention(q, k, v, self.attn.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.attn.scale)
        return self.attn.merge_heads(out, b)

    def attend_gathered(
        self, y: Tensor, decision: Tensor, refined: Tensor, norm: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Inference path: attention on the routed tokens only, scattered over the LTRM output.

        Args:
            y: (B, N, C) normalised tokens, or the block's input tokens when ``norm`` is given.
            decision: (B, N) hard decisions in {0, 1}.
            refined: (B, N, C) LTRM output.
            norm: applied to the gathered tokens only (the per-token LayerNorm: the same
                values as normalising all N first, for K tokens of memory instead of N).

        Returns:
            (B, N, C): attention output at routed tokens, LTRM output elsewhere.
        """
        keep = decision > 0.5
        counts = keep.sum(dim=1)
        c = y.shape[-1]
        # inference: write into the LTRM output, which mix_tokens no longer needs
        out = refined if not torch.is_grad_enabled() else refined.clone()
        if bool((counts == counts[0]).all()):
            # Same K in every image (batch 1, top-K): one batched call.
            k = int(counts[0])
            if k == 0:
                return out
            index = keep.nonzero()[:, 1].view(y.shape[0], k)[..., None].expand(-1, -1, c)
            gathered = y.gather(1, index)
            attended = self._attention(gathered if norm is None else norm(gathered))
            del gathered
            return out.scatter_(1, index, attended.to(out.dtype))
        for i in range(y.shape[0]):  # K differs per image: one call each, no padding
            index = keep[i].nonzero()[:, 0]
            if index.numel():
                gathered = y[i : i + 1, index]
                out[i, index] = self._attention(gathered if norm is None else norm(gathered))[0].to(out.dtype)
        return out

    def refine(self, x: Tensor) -> Tensor:
        """The LTRM output for (B, H, W, C) ``x``; at inference the conv LTRM runs in row
        bands (:meth:`~mematte.models.ltrm.ConvTokenRefiner.forward_in_bands`), so its 2C-wide
        layers exist for one band at a time."""
        if self.training or torch.is_grad_enabled() or not isinstance(self.ltrm, ConvTokenRefiner):
            return self.ltrm(x)
        b, h, w, c = x.shape
        rows = max(1, -(-2 * self.band_tokens() // (b * w)))
        return self.ltrm.forward_in_bands(x, rows)

    def mix_tokens(self, x: Tensor) -> tuple[Tensor, RoutingInfo]:
        """x: (B, H, W, C) → (mixed (B, H, W, C), routing decisions)."""
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        log_probs = self.router(tokens)
        decision = self.decide(log_probs)
        if self.training:
            refined = self.ltrm(x).reshape(b, h * w, c)
            mixed = self.attend_dense(self.norm1(tokens), decision, refined)
        else:  # the LayerNorm only on the routed tokens
            refined = self.refine(x).reshape(b, h * w, c)
            mixed = self.attend_gathered(tokens, decision, refined, norm=self.norm1)
        return mixed.view(b, h, w, c), RoutingInfo(decision=decision, log_probs=log_probs, grid=(h, w))


__all__ = [
    "MASKED_SOFTMAXES",
    "POLICY_EPS",
    "policy_matrix",
    "INFERENCE_RULES",
    "INFERENCE_RULE_FNS",
    "RoutedBlock",
    "SELECTIONS",
    "argmax_rule",
    "expected_rule",
    "keep_count",
    "masked_dense_attention",
    "routing_scores",
    "top_k_mask",
]
