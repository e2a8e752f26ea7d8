"""MEMatte through training and evaluation: every router × LTRM, the keep-ratio objective,
distillation from a ViTMatte teacher and student initialisation."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import CONF_DIR, TINY_TRAIN
from mematte.checkpoints import build_net, init_net_from, load_checkpoint, net_state
from mematte.cli import train
from test_train import run_script

ROUTERS = sorted(p.stem for p in (CONF_DIR / "router").glob("*.yaml") if p.stem not in ("none", "_routed"))
LTRMS = sorted(p.stem for p in (CONF_DIR / "ltrm").glob("*.yaml"))
# The fast suite covers each axis once (every router with the paper's LTRM, every LTRM with the
# paper's router); the full cross product runs in the slow suite.
COMBINATIONS = [
    pytest.param(r, l, marks=() if (r == "local_global" or l == "conv") else pytest.mark.slow)
    for r in ROUTERS
    for l in LTRMS
]


def csv_rows(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def run_train(make_cfg, overrides: list[str], output_dir: Path | None = None):
    cfg = make_cfg("train", overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
        cfg.logger.csv.save_dir = str(output_dir)
        cfg.callbacks.model_checkpoint.dirpath = str(output_dir / "checkpoints")
    train(cfg)
    return cfg, json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.parametrize("router,ltrm", COMBINATIONS)
def test_fast_dev_run_every_router_and_ltrm(make_cfg, router, ltrm):
    _, summary = run_train(make_cfg, [f"router={router}", f"ltrm={ltrm}", "debug=fast_dev_run"])
    assert summary["global_step"] == 1
    assert {"sad", "keep_ratio", "keep_ratio/block2", "keep_ratio/block11"} <= set(summary["test"])


def test_train_and_eval_entry_points_as_typed(tmp_path, monkeypatch):
    """`python train.py router=local_global ltrm=conv`, then eval.py on its checkpoint (in this
    process, through the scripts' own Hydra mains; in fresh processes: tests/test_train.py)."""
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    run_script("train.py", ["router=local_global", "ltrm=conv", *overrides, "trainer.max_steps=3",
                            f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["config"]["backbone"]["global_block"]["router"]["_target_"].endswith("LocalGlobalRouter")
    for stage in ("val_untrained", "val_final", "test"):
        assert 0.0 <= summary[stage]["keep_ratio"] <= 1.0
    logged = csv_rows(run_dir, "train/keep_ratio/block8")
    assert [step for step, _ in logged] == [0, 1, 2]  # per-block kept ratios every step

    last = run_dir / "checkpoints" / "last.ckpt"
    eval_dir = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={last}", "data.test_set.num_samples=2", "data.test_set.min_size=64",
                           "data.test_set.max_size=90", "routed_inference.inference=expected",
                           f"hydra.run.dir={eval_dir}"], tmp_path, monkeypatch)
    result = json.loads((eval_dir / "metrics.json").read_text())
    assert {"sad", "mse", "grad", "conn", "keep_ratio", "keep_ratio/block5"} <= set(result["metrics"])
    # three steps in, routers are unsure (p ≈ 0.5): the expected share is well above zero
    assert result["metrics"]["keep_ratio"] > 0.1
    assert result["routed_inference"] == {"inference": "expected"}
    assert (run_dir / "eval" / "synthetic_test_inference-expected.json").is_file()


@pytest.mark.slow  # a short training run (~8 s); the full suite runs it
def test_short_training_moves_kept_ratio_toward_target(make_cfg):
    """BATR pulls the batch-average kept ratio from ~0.5 (fresh routers) toward 0.25."""
    cfg, _ = run_train(make_cfg, ["router=local_global", "ltrm=conv", "trainer.max_steps=30",
                                  "module.scheduler.warmup_steps=0", "test=false", "callbacks=none",
                                  "validate_before_training=false", "trainer.val_check_interval=30"])
    ratios = [r for _, r in csv_rows(Path(cfg.paths.output_dir), "train/keep_ratio")]
    assert len(ratios) == 30
    early, late = sum(ratios[:5]) / 5, sum(ratios[-5:]) / 5
    assert abs(late - 0.25) < abs(early - 0.25) - 0.1, (early, late)


def test_fixed_routing_follows_the_annealed_share(make_cfg):
    """routing=fixed: exact top-K per image; the share anneals 1.0 → 0.25 over 4 steps."""
    cfg, _ = run_train(make_cfg, ["router=local_global", "routing=fixed", "routing.schedule=anneal",
                                  "routing.anneal_steps=4", "trainer.max_steps=5", "test=false",
                                  "callbacks=none", "validate_before_training=false",
                                  "trainer.val_check_interval=5"])
    # 64² crops → 16 tokens per image; K = round(16·t) with t = 1, .8125, .625, .4375, .25
    logged = dict(csv_rows(Path(cfg.paths.output_dir), "train/keep_ratio"))
    assert logged == pytest.approx({0: 1.0, 1: 13 / 16, 2: 10 / 16, 3: 7 / 16, 4: 4 / 16})
    assert "train/keep_ratio_loss" not in (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def vitmatte_ckpt(tmp_path_factory) -> Path:
    """A tiny trained-for-one-step ViTMatte checkpoint (the teacher / student init)."""
    from conftest import compose_config

    out = tmp_path_factory.mktemp("vitmatte")
    cfg = compose_config("train", [*TINY_TRAIN, "trainer.max_steps=1", "test=false",
                                   "validate_before_training=false", "trainer.val_check_interval=1"], out)
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow  # two training runs (~5 s); the full suite runs it
def test_distillation_from_teacher_checkpoint_and_resume(make_cfg, vitmatte_ckpt, tmp_path):
    run_dir = tmp_path / "student"
    common = ["model=mematte", f"teacher.ckpt={vitmatte_ckpt}", "test=false",
              "validate_before_training=false", "trainer.val_check_interval=2"]
    run_train(make_cfg, [*common, f"init_from={vitmatte_ckpt}", "trainer.max_steps=2"], run_dir)
    distill = csv_rows(run_dir, "train/distill")
    assert len(distill) == 2 and all(v > 0 for _, v in distill)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    assert not [k for k in ckpt["state_dict"] if k.startswith("teacher.")], "teacher stored in the student"
    # resuming the distillation run continues at the stored step
    run_train(make_cfg, [*common, f"ckpt_path={last}", "trainer.max_steps=3"], run_dir)
    assert load_checkpoint(last)["global_step"] == 3


def test_without_teacher_the_run_says_distillation_is_off_once(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="mematte"):
        run_train(make_cfg, ["router=local_global", "trainer.max_steps=2", "test=false",
                             "validate_before_training=false", "trainer.val_check_interval=2"])
    said = [r for r in caplog.records if "distillation loss is off" in r.getMessage()]
    assert len(said) == 1


def test_student_initialised_from_vitmatte(make_cfg, vitmatte_ckpt, caplog):
    cfg = make_cfg("train", ["router=local_global", "ltrm=conv"])
    student = build_net(cfg.model)
    fresh_router = student.backbone.blocks[2].router.in_conv[1].weight.clone()
    with caplog.at_level(logging.INFO, logger="mematte"):
        init_net_from(student, vitmatte_ckpt)
    teacher_state = net_state(load_checkpoint(vitmatte_ckpt))
    for key, value in student.state_dict().items():
        if ".router." in key or ".ltrm." in key:
            continue
        assert torch.equal(value, teacher_state[key]), key
    assert torch.equal(student.backbone.blocks[2].router.in_conv[1].weight, fresh_router)
    assert "backbone.blocks.2.attn.rel_pos_h" in teacher_state  # dropped, not loaded
    assert any("dropped: 8 rel-pos tables" in r.getMessage() for r in caplog.records)


def test_init_from_a_different_backbone_lists_the_mismatch(make_cfg, vitmatte_ckpt):
    cfg = make_cfg("train", ["router=local_global", "backbone=vit_small"])
    with pytest.raises(ValueError, match=r"mismatched \(219\): backbone\.pos_embed: checkpoint \(1, 197, 192\) vs model \(1, 197, 384\)"):
        init_net_from(build_net(cfg.model), vitmatte_ckpt)
