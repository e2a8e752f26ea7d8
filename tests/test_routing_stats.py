"""Routing statistics of MEMatte: the inference rules, RoutingStats (kept ratios under each
rule, p(global) spread, unknown-region enrichment), the token unknown share and their logging
in training, validation and test."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from mematte.checkpoints import build_net
from mematte.cli import train
from mematte.metrics import ROUTING_STATS, RoutingStats
from mematte.models import ltrm as ltrms
from mematte.models import router as routers
from mematte.models.matting_net import token_unknown_share
from mematte.models.routed_block import INFERENCE_RULES, RoutedBlock, argmax_rule, expected_rule


def log_probs_of(p_global: torch.Tensor) -> torch.Tensor:
    """(B, N) p(global) → (B, N, 2) log-probabilities."""
    return torch.stack([p_global.log(), (1 - p_global).log()], dim=-1)


# A 2-image batch of 4 tokens each, with hand-computed statistics.
P_GLOBAL = [[0.9, 0.7, 0.6, 0.55], [0.45, 0.40, 0.35, 0.42]]
DECISION = [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]  # any decisions (e.g. a capped rule)
UNKNOWN = [[1.0, 0.5, 0.0, 0.0], [0.0, 0.25, 1.0, 0.75]]  # Σu = 3.5 over 8 tokens
# argmax (p ≥ 0.5): image 0 all four, image 1 none
ARGMAX = [[True, True, True, True], [False, False, False, False]]
# expected: image 0 round(2.75) = 3 → tokens 0, 1, 2; image 1 round(1.62) = 2 → tokens 0, 3
EXPECTED = [[True, True, True, False], [True, False, False, True]]
HAND = {
    "keep_ratio": 3 / 8,
    "keep_ratio_argmax": 4 / 8,
    "keep_ratio_expected": 5 / 8,
    "p_global_mean": 4.37 / 8,
    "p_global_std": statistics.pstdev([p for row in P_GLOBAL for p in row]),
    # (Σ_kept u / kept) / (Σu / N): used 1.25/3, argmax 1.5/4, expected 2.25/5, over 3.5/8
    "enrichment": (1.25 / 3) / (3.5 / 8),
    "enrichment_argmax": (1.5 / 4) / (3.5 / 8),
    "enrichment_expected": (2.25 / 5) / (3.5 / 8),
}


def hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(DECISION), log_probs_of(torch.tensor(P_GLOBAL)), torch.tensor(UNKNOWN)


def computed(meter: RoutingStats) -> dict[str, float]:
    return {k: float(v) for k, v in meter.compute().items()}


# --------------------------------------------------------------------------- inference rules
def test_rules_on_hand_computed_batch():
    _, log_probs, _ = hand_batch()
    assert argmax_rule(log_probs).tolist() == ARGMAX
    assert expected_rule(log_probs).tolist() == EXPECTED
    # p = 0.5 exactly is a tie: argmax goes to global attention
    assert argmax_rule(log_probs_of(torch.tensor([[0.5, 0.49]]))).tolist() == [[True, False]]


@pytest.mark.parametrize("rule", INFERENCE_RULES)
def test_block_decides_with_the_shared_rules(rule):
    """RoutedBlock.decide at inference is exactly the public rule (no cap set)."""
    torch.manual_seed(0)
    block = RoutedBlock(48, num_heads=3, router=routers.TinyRouter, ltrm=ltrms.ConvTokenRefiner, inference=rule).eval()
    log_probs = torch.randn(3, 40, 2).log_softmax(dim=-1) * 0.5
    decision = block.decide(log_probs)
    expected = {"argmax": argmax_rule, "expected": expected_rule}[rule](log_probs)
    assert decision.dtype == torch.float32 and torch.equal(decision.bool(), expected)


# --------------------------------------------------------------------------- RoutingStats
def test_routing_stats_hand_computed():
    meter = RoutingStats()
    meter.update(*hand_batch())
    values = computed(meter)
    assert list(values) == list(ROUTING_STATS)
    assert values == pytest.approx(HAND, rel=1e-6)


def test_routing_stats_pool_updates_token_weighted():
    """Two updates (e.g. one image each, or two blocks) pool their tokens like one update."""
    decision, log_probs, unknown = hand_batch()
    split = RoutingStats()
    for i in range(2):
        split.update(decision[i : i + 1], log_probs[i : i + 1], unknown[i : i + 1])
    assert computed(split) == pytest.approx(HAND, rel=1e-6)
    # a second, different-sized update moves the ratios by token weight
    split.update(torch.ones(1, 8), log_probs_of(torch.full((1, 8), 0.8)), torch.zeros(1, 8))
    values = computed(split)
    assert values["keep_ratio"] == pytest.approx((3 + 8) / 16)
    assert values["keep_ratio_argmax"] == pytest.approx((4 + 8) / 16)
    assert values["enrichment"] == pytest.approx((1.25 / 11) / (3.5 / 16))


def test_uniform_random_router_has_enrichment_one():
    gen = torch.Generator().manual_seed(0)
    b, n = 8, 4096
    # unknown maps with structure (a band of detail) the router knows nothing about
    unknown = (torch.rand(b, n, generator=gen) < 0.3).float() * torch.rand(b, n, generator=gen)
    p_global = torch.rand(b, n, generator=gen).clamp(1e-4, 1 - 1e-4)
    decision = (torch.rand(b, n, generator=gen) < p_global).float()  # sampled, as in training
    meter = RoutingStats()
    meter.update(decision, log_probs_of(p_global), unknown)
    values = computed(meter)
    for key in ("enrichment", "enrichment_argmax", "enrichment_expected"):
        assert values[key] == pytest.approx(1.0, abs=0.05), key
    assert values["p_global_mean"] == pytest.approx(0.5, abs=0.01)
    assert values["p_global_std"] == pytest.approx(math.sqrt(1 / 12), abs=0.01)
    assert values["keep_ratio"] == pytest.approx(0.5, abs=0.01)
    assert values["keep_ratio_argmax"] == pytest.approx(0.5, abs=0.01)


def test_router_keeping_exactly_the_unknown_tokens():
    gen = torch.Generator().manual_seed(1)
    unknown = (torch.rand(4, 100, generator=gen) < 0.2).float()
    share = float(unknown.mean())
    # confident router: p = 0.9 on unknown tokens, 0.1 elsewhere
    log_probs = log_probs_of(torch.where(unknown > 0, 0.9, 0.1))
    meter = RoutingStats()
    meter.update(unknown, log_probs, unknown)
    values = computed(meter)
    assert values["enrichment"] == pytest.approx(1 / share)
    assert values["enrichment_argmax"] == pytest.approx(1 / share)
    assert values["keep_ratio"] == values["keep_ratio_argmax"] == pytest.approx(share)
    # and a router keeping exactly the known tokens scores 0
    meter.reset()
    meter.update(1 - unknown, log_probs_of(torch.where(unknown > 0, 0.1, 0.9)), unknown)
    assert computed(meter)["enrichment"] == 0.0 and computed(meter)["enrichment_argmax"] == 0.0


def test_undefined_statistics_are_nan():
    meter = RoutingStats()
    with pytest.warns(UserWarning, match="before the ``update``"):
        values = computed(meter)
    assert values["keep_ratio"] == 0.0 and math.isnan(values["p_global_mean"]) and math.isnan(values["enrichment"])
    # undecided router (p ≈ 0.3 everywhere): argmax keeps nothing → its enrichment is NaN
    meter.update(torch.zeros(1, 10), log_probs_of(torch.full((1, 10), 0.3)), torch.linspace(0, 1, 10)[None])
    values = computed(meter)
    assert values["keep_ratio_argmax"] == 0.0
    assert math.isnan(values["enrichment"]) and math.isnan(values["enrichment_argmax"])
    assert values["keep_ratio_expected"] == pytest.approx(0.3)  # round(3.0) tokens
    assert math.isfinite(values["enrichment_expected"])
    assert values["p_global_std"] == pytest.approx(0.0, abs=1e-6)
    # a split without unknown pixels
    meter.reset()
    meter.update(torch.ones(1, 10), log_probs_of(torch.full((1, 10), 0.7)), torch.zeros(1, 10))
    assert all(math.isnan(computed(meter)[k]) for k in ("enrichment", "enrichment_argmax", "enrichment_expected"))


def test_routing_stats_updates_under_inference_mode_then_outside():
    """States reset under inference mode (validation before fit) must still update later."""
    meter = RoutingStats()
    with torch.inference_mode():
        meter.update(*hand_batch())
        meter.reset()
    meter.update(*hand_batch())
    assert computed(meter) == pytest.approx(HAND, rel=1e-6)


def test_routing_stats_rejects_mismatched_shapes():
    decision, log_probs, unknown = hand_batch()
    with pytest.raises(ValueError, match="unknown"):
        RoutingStats().update(decision, log_probs, unknown[:, :3])


# --------------------------------------------------------------------------- token unknown share
def test_token_unknown_share_matches_per_patch_count_with_padding():
    gen = torch.Generator().manual_seed(2)
    h, w, patch = 40, 70, 16  # padded to 64 × 96 → a 4 × 6 token grid
    trimap = torch.randint(0, 3, (2, 1, h, w), generator=gen).float() / 2  # {0, 0.5, 1}
    share = token_unknown_share(trimap, patch_size=patch, size_divisor=32)
    assert share.shape == (2, 4 * 6)
    for b in range(2):
        for r in range(4):
            for c in range(6):
                pixels = trimap[b, 0, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
                # padded pixels are known background: they count in the patch, never as unknown
                expected = float((pixels == 0.5).sum()) / patch**2
                assert float(share[b, r * 6 + c]) == pytest.approx(expected), (b, r, c)
    assert float(share[:, 3 * 6 :].max()) == 0.0  # row 3 (pixels 48..63) is all padding
    assert float(share[0, 0]) > 0.0


def test_token_unknown_share_is_the_routing_grid(make_cfg):
    net = build_net(make_cfg("train", ["router=local_global", "ltrm=conv"]).model).eval()
    image, trimap = torch.rand(1, 3, 40, 70), torch.full((1, 1, 40, 70), 0.5)
    with torch.no_grad():
        out = net(image, trimap)
    share = net.token_unknown_share(trimap)
    assert out.routing and all(share.shape == info.decision.shape for info in out.routing)
    gh, gw = out.routing[0].grid
    assert (gh, gw) == (4, 6)  # 40 × 70 padded to 64 × 96
    # all-unknown image: full patches inside, partial ones at the border, none in the padding
    grid = share.view(gh, gw)
    assert float(grid[0, 0]) == 1.0 and float(grid[2, 4]) == pytest.approx((40 - 32) * (70 - 64) / 256)
    assert float(grid[3].max()) == 0.0 and float(grid[:, 5].max()) == 0.0


# --------------------------------------------------------------------------- logging
def test_training_validation_and_test_log_every_routing_key(make_cfg, tmp_path):
    cfg = make_cfg("train", ["router=local_global", "ltrm=conv", "trainer.max_steps=1",
                             "trainer.val_check_interval=1", "callbacks=none",
                             "validate_before_training=false"])
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    blocks = build_net(cfg.model).backbone.routed_block_indexes
    assert blocks
    keys = set(ROUTING_STATS) | {f"{s}/block{i}" for s in ROUTING_STATS for i in blocks}
    for stage in ("val_final", "test"):
        assert keys <= set(summary[stage]), (stage, sorted(keys - set(summary[stage])))
        for key in keys:
            value = summary[stage][key]
            if key.startswith("keep_ratio"):
                assert 0.0 <= value <= 1.0, key
            elif key.startswith("p_global"):
                assert 0.0 <= value <= 1.0, key
            else:  # enrichment: undefined (null in metrics.json) when a rule keeps nothing
                assert value is None or value >= 0.0, key
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    p_std = [float(r["train/p_global_std"]) for r in rows if r.get("train/p_global_std")]
    assert len(p_std) == 1 and 0.0 <= p_std[0] <= 0.5
    assert any(r.get(f"test/enrichment_argmax/block{blocks[-1]}") for r in rows)


def test_nan_statistics_survive_the_summary_json_and_the_csv_log(tmp_path):
    """A NaN enrichment is null in metrics.json (strict JSON) and NaN in metrics.csv: never 0,
    never a crash."""
    from lightning.pytorch.loggers import CSVLogger

    from mematte.cli import scalar_metrics, write_json

    nan = torch.tensor(float("nan"), dtype=torch.float64)
    summary = scalar_metrics({"test/enrichment_argmax": nan, "test/keep_ratio_argmax": torch.tensor(0.0)}, "test/")
    write_json(tmp_path / "metrics.json", summary)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["enrichment_argmax"] is None and loaded["keep_ratio_argmax"] == 0.0
    logger = CSVLogger(tmp_path, name="csv", version=0)
    logger.log_metrics({"test/enrichment_argmax": float(nan)}, step=0)
    logger.save()
    with (Path(logger.log_dir) / "metrics.csv").open() as f:
        assert math.isnan(float(next(csv.DictReader(f))["test/enrichment_argmax"]))
