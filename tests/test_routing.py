"""MEMatte routing: routers, LTRMs, the routed block's two attention paths, keep-ratio
objectives, distillation and student initialisation."""

from __future__ import annotations

import csv
import functools
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import CONF_DIR
from mematte.checkpoints import init_net_from, net_state
from mematte.cli import evaluate, train
from mematte.losses import KeepRatioLoss
from mematte.models import ltrm as ltrms
from mematte.models import router as routers
from mematte.models.decoder import DetailCapture
from mematte.models.matting_net import MattingNet
from mematte.models.routed_block import RoutedBlock, masked_dense_attention
from mematte.models.vit import ViT

ROUTER_OPTIONS = sorted(p.stem for p in (CONF_DIR / "router").glob("*.yaml") if not p.stem.startswith("_"))
LTRM_OPTIONS = sorted(p.stem for p in (CONF_DIR / "ltrm").glob("*.yaml"))
ROUTED = [r for r in ROUTER_OPTIONS if r != "none"]
LEARNED_ROUTERS = [
    routers.LocalGlobalRouter,
    routers.LocalRouter,
    routers.SmallRouter,
    routers.TinyRouter,
    routers.SERouter,
]
DIM = 48


def routed_block(router=routers.LocalGlobalRouter, ltrm=ltrms.ConvTokenRefiner, **kwargs) -> RoutedBlock:
    return RoutedBlock(DIM, num_heads=3, router=router, ltrm=ltrm, use_residual_block=True, **kwargs)


def tiny_vit(**kwargs) -> ViT:
    return ViT(embed_dim=DIM, depth=4, num_heads=3, window_size=4, global_block_indexes=(1, 3),
               residual_block_indexes=(1, 3), rel_pos_grid=8, **kwargs)


# --------------------------------------------------------------------------- configs
def test_option_lists_cover_the_ablation_axes():
    assert set(ROUTER_OPTIONS) == {"local_global", "local", "small", "tiny", "se", "random", "none"}
    assert set(LTRM_OPTIONS) == {"conv", "conv_no_eca", "eca_no_dwconv", "conv_no_shortcut", "mlp", "zero"}


def test_router_none_is_exactly_vitmatte(make_cfg):
    """router=none builds the foundation ViTMatte: same modules, same weights, same alpha."""
    cfg = make_cfg("train", ["router=none"])
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    torch.manual_seed(0)
    backbone = {k: v for k, v in cfg.backbone.items() if k not in ("_target_", "global_block")}
    decoder = {k: v for k, v in cfg.decoder.items() if k != "_target_"}
    reference = MattingNet(ViT(**backbone), DetailCapture(**decoder))
    assert not net.is_routed
    assert net.state_dict().keys() == reference.state_dict().keys()
    image, trimap = torch.rand(1, 3, 70, 90), torch.rand(1, 1, 70, 90).mul(2).round().div(2)
    net.eval(), reference.eval()
    with torch.no_grad():
        a, b = net(image, trimap), reference(image, trimap)
    assert torch.equal(a.alpha, b.alpha) and a.routing == []


def test_router_option_builds_routed_global_blocks(make_cfg):
    cfg = make_cfg("train", ["router=local_global", "ltrm=conv"])
    net = instantiate(cfg.model)
    assert net.backbone.routed_block_indexes == [2, 5, 8, 11]
    block = net.backbone.blocks[2]
    assert isinstance(block.router, routers.LocalGlobalRouter)
    assert isinstance(block.ltrm, ltrms.ConvTokenRefiner)
    assert not block.attn.use_rel_pos  # routed global blocks have no rel-pos (docs/method.md, MEMatte)
    assert net.backbone.blocks[1].attn.use_rel_pos  # window blocks keep theirs


# --------------------------------------------------------------------------- routers
@pytest.mark.parametrize("router_cls", [*LEARNED_ROUTERS, routers.RandomRouter])
def test_router_returns_normalised_log_probs(router_cls):
    router = router_cls(DIM)
    logp = router(torch.randn(2, 30, DIM))
    assert logp.shape == (2, 30, 2)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 30))


def test_local_global_router_uses_image_context_and_local_router_does_not():
    x = torch.randn(1, 20, DIM)
    other = x.clone()
    other[:, 10:] = torch.randn(1, 10, DIM)  # change the other tokens only
    for cls, context in ((routers.LocalGlobalRouter, True), (routers.LocalRouter, False)):
        router = cls(DIM)
        changed = not torch.allclose(router(x)[:, :10], router(other)[:, :10])
        assert changed == context, cls.__name__


def test_official_module_names():
    names = set(dict(routers.LocalGlobalRouter(DIM).named_parameters()))
    assert {"in_conv.0.weight", "in_conv.1.weight", "out_conv.0.weight", "out_conv.2.weight",
            "out_conv.4.weight"} <= names
    names = set(dict(ltrms.ConvTokenRefiner(DIM).named_parameters()))
    assert names == {"fc1.weight", "fc1.bias", "dwconv.weight", "dwconv.bias", "fc2.weight",
                     "fc2.bias", "eca.conv.weight"}


def test_random_router_picks_an_exact_random_share():
    router = routers.RandomRouter(DIM, fraction=0.25)
    x = torch.randn(3, 40, DIM)
    first, second = router(x), router(x)
    for logp in (first, second):
        assert ((logp[..., 0] > logp[..., 1]).sum(1) == 10).all()
    assert not torch.equal(first, second)


# --------------------------------------------------------------------------- LTRMs
def test_conv_ltrm_ablations_are_the_documented_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, DIM)
    full = ltrms.ConvTokenRefiner(DIM)
    t = full.fc2(F.gelu(full.dwconv(F.gelu(full.fc1(x)).permute(0, 3, 1, 2))).permute(0, 2, 3, 1))
    gate = torch.sigmoid(full.eca.conv(t.mean(dim=(1, 2))[:, None, :]))[:, 0]
    torch.testing.assert_close(full(x), t + t * gate[:, None, None, :])

    no_shortcut = ltrms.ConvTokenRefiner(DIM, eca_shortcut=False)
    no_shortcut.load_state_dict(full.state_dict())
    torch.testing.assert_close(no_shortcut(x), t * gate[:, None, None, :])

    no_eca = ltrms.ConvTokenRefiner(DIM, eca=False)
    no_eca.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("eca")})
    torch.testing.assert_close(no_eca(x), t)

    no_dw = ltrms.ConvTokenRefiner(DIM, dwconv=False)
    assert no_dw.dwconv is None and no_dw(x).shape == x.shape
    assert torch.equal(ltrms.ZeroTokenRefiner(DIM)(x), torch.zeros_like(x))
    assert ltrms.MLPTokenRefiner(DIM)(x).shape == x.shape


def test_conv_ltrm_mixes_neighbours_and_mlp_does_not():
    x = torch.randn(1, 6, 6, DIM)
    poked = x.clone()
    poked[0, 0, 0] += 1.0
    for refiner, spatial in ((ltrms.ConvTokenRefiner(DIM, eca=False), True), (ltrms.MLPTokenRefiner(DIM), False)):
        diff = (refiner(poked) - refiner(x)).abs().sum(-1)[0]
        assert bool(diff[1, 1] > 0) == spatial


# --------------------------------------------------------------------------- routed block
@pytest.mark.parametrize("equal_counts", [True, False])
def test_dense_and_gathered_paths_agree(equal_counts):
    """Same hard decisions → same block output from both paths (fp32, 1e-5)."""
    torch.manual_seed(0)
    block = routed_block().eval()
    b, n = 2, 48
    y = torch.randn(b, n, DIM)
    refined = torch.randn(b, n, DIM)
    scores = torch.rand(b, n)
    if equal_counts:
        decision = torch.zeros(b, n)
        decision.scatter_(1, scores.topk(13, dim=1).indices, 1.0)
    else:
        decision = (scores > torch.tensor([[0.3], [0.8]])).float()
        assert decision.sum(1)[0] != decision.sum(1)[1]
    dense = block.attend_dense(y, decision, refined)
    gathered = block.attend_gathered(y, decision, refined)
    torch.testing.assert_close(dense, gathered, rtol=1e-5, atol=1e-5)
    # unrouted tokens are exactly the LTRM output
    assert torch.equal(gathered[decision == 0], refined[decision == 0])


def test_dense_path_matches_with_straight_through_decisions():
    torch.manual_seed(1)
    block = routed_block()
    y, refined = torch.randn(1, 30, DIM), torch.randn(1, 30, DIM)
    logits = torch.randn(1, 30, 2, requires_grad=True)
    decision = F.gumbel_softmax(logits, hard=True)[..., 0]
    dense = block.attend_dense(y, decision, refined)
    gathered = block.attend_gathered(y, decision.detach(), refined)
    torch.testing.assert_close(dense, gathered, rtol=1e-5, atol=1e-5)
    dense.square().sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_masked_dense_attention_is_softmax_over_allowed_keys_and_differentiable_in_drops():
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 1, 10, 8).unbind(0)
    keep = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 0, 1, 1]], dtype=torch.float32, requires_grad=True)
    out = masked_dense_attention(q, k, v, keep, scale=0.5)
    logits = (q * 0.5) @ k.transpose(-2, -1)
    allowed = keep.detach().bool()[:, None, :] | torch.eye(10, dtype=torch.bool)
    expected = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert (keep.grad[0, keep[0] == 0] != 0).all(), "dropped keys get no gradient"


def test_masked_dense_attention_stays_fp32_under_autocast():
    q, k, v = torch.randn(3, 2, 20, 8).unbind(0)
    keep = (torch.rand(2, 20) > 0.5).float()
    reference = masked_dense_attention(q, k, v, keep, scale=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_dense_attention(q, k, v, keep, scale=0.3)
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)


def test_inference_attention_receives_only_the_routed_tokens(monkeypatch):
    block = routed_block(router=routers.RandomRouter).eval()  # exactly 12 of 48 tokens
    seen: list[tuple[int, ...]] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(tuple(k.shape))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    x = torch.randn(1, 6, 8, DIM)
    with torch.no_grad():
        _, info = block(x)
    kept = int(info.decision.sum())
    assert kept == 12
    assert seen == [(3, kept, DIM // 3)]  # (heads, K, head_dim): only K tokens enter attention


def test_max_tokens_caps_inference_by_score():
    torch.manual_seed(3)
    block = routed_block(router=routers.TinyRouter).eval()
    with torch.no_grad():
        block.router.net[1].bias.copy_(torch.tensor([5.0, 0.0]))  # route everything
        x = torch.randn(1, 6, 8, DIM)
        _, free = block(x)
        block.max_tokens = 7
        _, capped = block(x)
    assert int(free.decision.sum()) == 48 and int(capped.decision.sum()) == 7
    scores = capped.log_probs[..., 0] - capped.log_probs[..., 1]
    assert torch.equal(capped.decision[0].bool(), torch.zeros(48, dtype=torch.bool).scatter(0, scores[0].topk(7).indices, True))


def test_topk_selection_keeps_exact_share_in_training_and_inference():
    block = routed_block(selection="topk", keep_ratio=0.25)
    x = torch.randn(2, 6, 8, DIM)
    _, train_info = block(x)
    assert (train_info.decision.detach().sum(1) == 12).all()
    train_info.decision.sum().backward()
    assert block.router.out_conv[4].weight.grad is not None  # straight-through to the scores
    block.eval()
    with torch.no_grad():
        _, eval_info = block(x)
    assert (eval_info.decision.sum(1) == 12).all()


@pytest.mark.parametrize("router_cls", LEARNED_ROUTERS)
def test_gradients_reach_every_router_parameter(router_cls):
    torch.manual_seed(4)
    vit = tiny_vit(global_block=functools.partial(RoutedBlock, router=router_cls, ltrm=ltrms.ConvTokenRefiner))
    out = vit(torch.randn(2, 4, 64, 96))
    loss = out.features.square().mean() + KeepRatioLoss()([r.decision for r in out.routing], step=0)
    loss.backward()
    for b in vit.routed_blocks:
        for name, p in b.router.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{router_cls.__name__}.{name} gets no gradient"


def test_routed_block_rejects_bad_settings():
    with pytest.raises(ValueError, match="selection"):
        routed_block(selection="soft")
    with pytest.raises(ValueError, match="window_size must be 0"):
        routed_block(window_size=14)


# --------------------------------------------------------------------------- keep-ratio objectives
def test_keep_ratio_loss_modes():
    # two blocks, two images of 4 tokens
    d1 = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]])  # block ratios per image: 1, 0
    d2 = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0]])  # 0.25, 0.5
    t = 0.25
    batch = KeepRatioLoss("batch", target=t)([d1, d2], 0)
    assert batch.item() == pytest.approx((0.4375 - t) ** 2)
    image = KeepRatioLoss("image", target=t)([d1, d2], 0)
    assert image.item() == pytest.approx(((0.625 - t) ** 2 + (0.25 - t) ** 2) / 2)
    layer = KeepRatioLoss("layer", layer_targets=[0.1, 0.5])([d1, d2], 0)
    assert layer.item() == pytest.approx(((0.5 - 0.1) ** 2 + (0.375 - 0.5) ** 2) / 2)
    fixed = KeepRatioLoss("fixed", selection="topk")
    assert not fixed.has_loss and fixed([d1, d2], 0).item() == 0.0
    assert KeepRatioLoss("batch", weight=2.0)([d1, d2], 0).item() == pytest.approx(2 * batch.item())


def test_keep_ratio_schedule_anneals_then_holds():
    loss = KeepRatioLoss(target=0.25, schedule="anneal", anneal_steps=100, anneal_from=1.0)
    assert loss.targets(0, 2) == [1.0, 1.0]
    assert loss.targets(50, 1) == pytest.approx([0.625])
    assert loss.targets(100, 1) == [0.25] and loss.targets(10_000, 1) == [0.25]
    assert KeepRatioLoss(target=0.5).targets(0, 3) == [0.5] * 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="fixed", selection="gumbel"), "selection='topk'"),
        (dict(mode="batch", selection="topk"), "selection='gumbel'"),
        (dict(mode="bogus"), "choose one of"),
        (dict(schedule="cosine"), "choose one of"),
        (dict(schedule="anneal"), "anneal_steps"),
        (dict(target=0.0), r"\(0, 1\]"),
        (dict(mode="batch", layer_targets=[0.1, 0.2]), "layer_targets"),
    ],
)
def test_keep_ratio_loss_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeepRatioLoss(**kwargs)


def test_layer_targets_must_match_routed_blocks():
    with pytest.raises(ValueError, match="2 entries for 4 routed blocks"):
        KeepRatioLoss("layer", layer_targets=[0.1, 0.2]).targets(0, 4)


def test_expected_inference_routes_the_sampled_share():
    """inference=expected: each image's top round(Σ p(global)) tokens; argmax routes none
    when every p(global) < 0.5."""
    block = routed_block(router=routers.TinyRouter).eval()
    with torch.no_grad():
        block.router.net[1].weight.mul_(0.01)
        block.router.net[1].bias.copy_(torch.tensor([-1.1, 0.0]))  # p(global) ≈ 0.25
        x = torch.randn(2, 6, 8, DIM)
        _, argmax = block(x)
        block.inference = "expected"
        _, expected = block(x)
    assert argmax.decision.sum() == 0
    counts = expected.log_probs[..., 0].exp().sum(1).round()
    assert torch.equal(expected.decision.sum(1), counts) and (counts == 12).all()
    scores = expected.log_probs[..., 0] - expected.log_probs[..., 1]
    for i in range(2):  # the highest-scoring tokens
        assert scores[i][expected.decision[i] > 0].min() >= scores[i][expected.decision[i] == 0].max()
    with pytest.raises(ValueError, match="inference"):
        routed_block(inference="sample")
