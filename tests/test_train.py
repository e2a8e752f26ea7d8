"""Training and evaluation through the real entry points, on tiny CPU settings."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_TRAIN
from mematte.cli import evaluate, run_script_in_process, train


def run_entry(script: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repo as a user would (fresh process)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def run_script(script: str, args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python <script> args`` from ``cwd``, but in this process (:func:`run_script_in_process`):
    saves the ~12 s of imports of a fresh interpreter (:func:`run_entry`)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # a failure raises with its traceback
    code = run_script_in_process(ROOT / script, args)
    assert code in (0, None), f"{script} exited with {code}"


def first_logged(csv_path: Path, key: str) -> float:
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            if row.get(key):
                return float(row[key])
    raise AssertionError(f"{key} never logged in {csv_path}")


@pytest.mark.parametrize("backbone", ["vit_tiny", "vit_small", "vit_base"])
def test_fast_dev_run_each_backbone(make_cfg, backbone):
    cfg = make_cfg("train", [f"backbone={backbone}", "debug=fast_dev_run"])
    train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["global_step"] == 1
    # debug=fast_dev_run saves no last.ckpt (1.1 GB of weights and AdamW moments for ViT-B)
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()
    assert set(summary["test"]) == {"sad", "mse", "grad", "conn", "latency_s", "peak_mib"}


def test_same_seed_same_first_step_loss(make_cfg, tmp_path):
    losses = []
    for run, seed in enumerate([7, 7, 8]):
        cfg = make_cfg(
            "train",
            [f"seed={seed}", "trainer.max_steps=1", "test=false", "validate_before_training=false",
             "callbacks=none"],
        )
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run{run}")
        cfg.logger.csv.save_dir = cfg.paths.output_dir
        train(cfg)
        losses.append(first_logged(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", "train/loss"))
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


@pytest.mark.parametrize(
    "fresh", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["in_process", "fresh_processes"]
)
def test_train_then_eval_entry_points(tmp_path, monkeypatch, fresh):
    """`python train.py ...` then `python eval.py ckpt_path=...` as a user types them: in fresh
    processes (slow: ~12 s of imports each), and through the scripts' own Hydra mains in this
    process (the fast suite; predict.py runs fresh in tests/test_predict_cli.py)."""

    def run(script: str, args: list[str]) -> None:
        if fresh:
            run_entry(script, args, cwd=tmp_path)
        else:
            run_script(script, args, tmp_path, monkeypatch)

    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_TRAIN if not o.startswith("logger=")]
    run("train.py", [*overrides, "trainer.max_steps=4", "logger=[csv,wandb]", f"hydra.run.dir={run_dir}"])
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 4
    assert set(summary["val_untrained"]) == {"sad", "mse", "grad", "conn"}
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and summary["best_checkpoint"]
    # offline W&B run written locally
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run"

    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["mematte"]["net_config"]["backbone"]["embed_dim"] == 192
    assert ckpt["mematte"]["seed"] == "42"
    assert "torch" in ckpt["mematte"]["versions"]

    eval_dir = tmp_path / "eval"
    run("eval.py", [f"ckpt_path={last}", "data.test_set.num_samples=3", "data.test_set.min_size=64",
                    "data.test_set.max_size=90", "extras.print_config=false", f"hydra.run.dir={eval_dir}"])
    result = json.loads((run_dir / "eval" / "synthetic_test.json").read_text())
    assert result["num_images"] == 3 and result["split"] == "test"
    assert result["checkpoint_step"] == 4
    assert set(result["metrics"]) == {"sad", "mse", "grad", "conn", "latency_s", "peak_mib"}
    assert all(v >= 0 for v in result["metrics"].values())
    assert json.loads((eval_dir / "metrics.json").read_text()) == result


def test_eval_missing_checkpoint_says_what_to_do(make_cfg):
    cfg = make_cfg("eval", ["ckpt_path=/nonexistent/last.ckpt"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found: /nonexistent/last.ckpt"):
        evaluate(cfg)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    overrides = [o for o in TINY_TRAIN if o != "trainer=cpu"]
    run_entry(
        "train.py",
        [*overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.precision=32-true", "trainer.sync_batchnorm=false", "trainer.max_steps=3",
         "trainer.val_check_interval=3",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 3
    assert set(summary["test"]) == {"sad", "mse", "grad", "conn", "latency_s", "peak_mib"}


def test_each_training_job_closes_its_wandb_run(tmp_path, monkeypatch):
    """A multirun trains jobs in one process: job 2 must not log into job 1's W&B run."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from mematte.cli import _finish_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="mematte-test", save_dir=str(tmp_path))
    run_id = logger.experiment.id
    assert wandb.run is not None and wandb.run.id == run_id
    _finish_wandb([logger])
    assert wandb.run is None
    _finish_wandb([])  # no W&B logger: nothing to do
