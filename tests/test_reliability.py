"""Reliability: resume after kill -9, preemption signals, numeric faults, determinism.

Fast tests exercise the pieces (resume discovery, resumable data order, RNG state, atomic
saves, CSV history, requeue decision) and short in-process trainings (stop signals, NaN
steps, determinism). Slow tests run ``python train.py`` as a subprocess, kill it and rerun
the same command.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf, open_dict

from conftest import ROOT, TINY_TRAIN
from mematte import resilience
from mematte.cli import build_module, train
from mematte.data.datamodule import ResumableDataLoader, ResumableSampler
from mematte.lit_module import NonFiniteTrainingError

RESUME_ENV = ("MEMATTE_RESUME_RUN_DIR", "MEMATTE_RESUME_CKPT", "MEMATTE_RESUME_STEP", "MEMATTE_RESUME_DECIDED_BY")


@pytest.fixture(autouse=True)
def _isolated_resume_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_resume exports its decision for DDP children: undo it after each test."""
    for name in RESUME_ENV:
        monkeypatch.setenv(name, "")  # records the original value, restored at teardown
        monkeypatch.delenv(name)
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- helpers
def fake_run(root: Path, name: str, overrides: list[str], step: int | None = 3, finished: bool = False) -> Path:
    """A run directory as train() leaves it: .hydra/overrides.yaml, checkpoints/last.ckpt."""
    run = root / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if step is not None:
        (run / "checkpoints").mkdir()
        torch.save({"global_step": step}, run / "checkpoints" / "last.ckpt")
    if finished:
        (run / "metrics.json").write_text("{}")
    return run


def set_mtime(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def make_loader(seed: int = 1, batch_size: int = 3, n: int = 20, done: int | None = None) -> ResumableDataLoader:
    """A resumable loader over ``range(n)``; ``done``: batches of the epoch training has processed."""
    loader = ResumableDataLoader(
        _Dataset(n), batch_size=batch_size, sampler=ResumableSampler(_Dataset(n), seed=seed), drop_last=True
    )
    if done is not None:
        loader.progress = lambda: done
    return loader


def epoch_batches(loader: ResumableDataLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [b.tolist() for b in loader]


# --------------------------------------------------------------------------- resume discovery
def test_discovery_matches_same_overrides_newest_unfinished(tmp_path):
    cmd = ["data.batch_size=2", "trainer.max_steps=40"]
    old = fake_run(tmp_path, "old", cmd)
    new = fake_run(tmp_path, "new", list(reversed(cmd)) + ["resume=auto", "ckpt_path=last"])
    fake_run(tmp_path, "other", ["data.batch_size=4", "trainer.max_steps=40"])  # another command
    fake_run(tmp_path, "done", cmd, finished=True)  # finished runs are never resumed
    fake_run(tmp_path, "nockpt", cmd, step=None)  # killed before its first checkpoint
    set_mtime(old / "checkpoints" / "last.ckpt", 100)
    set_mtime(new / "checkpoints" / "last.ckpt", 10)

    found = resilience.find_resumable_run(tmp_path, cmd)
    assert found is not None and found.run_dir == new.resolve()
    assert [c.run_dir.name for c in resilience.resumable_runs(tmp_path, cmd)] == ["new", "old"]
    assert resilience.find_resumable_run(tmp_path, ["data.batch_size=3"]) is None
    assert resilience.find_resumable_run(tmp_path, cmd + ["seed=1"]) is None


def test_discovery_skips_damaged_finished_and_locked_runs(tmp_path):
    cmd = ["seed=3"]
    damaged = fake_run(tmp_path, "damaged", cmd)
    data = (damaged / "checkpoints" / "last.ckpt").read_bytes()
    (damaged / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])  # cut short
    marked = fake_run(tmp_path, "marked", cmd)
    resilience.update_run_state(marked, status="finished")
    live = fake_run(tmp_path, "live", cmd)
    assert resilience.find_resumable_run(tmp_path, cmd).run_dir == live.resolve()

    # a live process holds the run's lock (here: another process on the same file)
    hold = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('ok', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(live / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        assert resilience.find_resumable_run(tmp_path, cmd) is None
    finally:
        holder.kill()
        holder.wait()
    assert resilience.find_resumable_run(tmp_path, cmd).run_dir == live.resolve()


def test_plan_resume_modes(tmp_path):
    root = tmp_path / "logs" / "train"
    cmd = ["trainer.max_steps=9"]
    earlier = fake_run(root, "earlier", cmd, step=7)
    fresh = root / "runs" / "fresh"
    fresh.mkdir(parents=True)

    plan = resilience.plan_resume(fresh, root, cmd, "auto", None)
    assert plan.resumed and plan.run_dir == earlier.resolve() and plan.start_step == 7
    assert plan.ckpt_path == str(earlier.resolve() / "checkpoints" / "last.ckpt")
    # while this plan holds the run, a concurrent rerun does not resume into it
    assert not resilience.plan_resume(fresh, root, cmd, "auto", None).resumed
    plan.release()

    assert resilience.plan_resume(fresh, root, cmd, "auto", "last").resumed  # same, explicitly
    never = resilience.plan_resume(fresh, root, cmd, "never", None)
    assert not never.resumed and never.ckpt_path is None and never.run_dir == fresh.resolve()
    explicit = resilience.plan_resume(fresh, root, cmd, "auto", "/some/file.ckpt")
    assert not explicit.resumed and explicit.ckpt_path == "/some/file.ckpt"
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no unfinished earlier run"):
        resilience.plan_resume(fresh, root, ["trainer.max_steps=10"], "auto", "last")
    with pytest.raises(ValueError, match="choose auto or never"):
        resilience.plan_resume(fresh, root, cmd, "sometimes", None)


def test_plan_resume_ddp_children_follow_rank_zero(tmp_path, monkeypatch):
    root = tmp_path / "logs" / "train"
    earlier = fake_run(root, "earlier", ["seed=1"], step=4)
    plan = resilience.plan_resume(root / "runs" / "new", root, ["seed=1"], "auto", None)
    assert plan.resumed
    # a process launched by Lightning's DDP: LOCAL_RANK=1, decision inherited from rank 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MEMATTE_RESUME_DECIDED_BY", "1")
    child = resilience.plan_resume(root / "runs" / "new", root, ["seed=1"], "auto", None)
    assert child.resumed and child.run_dir == earlier.resolve() and child.lock is None and child.start_step == 4
    plan.release()


# --------------------------------------------------------------------------- data order
def test_sampler_order_is_pure_function_of_seed_and_epoch():
    a, b, c = make_loader(5), make_loader(5), make_loader(6)
    assert epoch_batches(a, 0) == epoch_batches(b, 0) != epoch_batches(c, 0)
    assert epoch_batches(a, 1) != epoch_batches(a, 0) and epoch_batches(a, 1) == epoch_batches(b, 1)
    assert len(a) == 6 and all(len(x) == 3 for x in epoch_batches(a, 2))
    # two replicas: disjoint halves of the same permutation
    shards = [list(ResumableSampler(_Dataset(20), seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 10


def test_loader_resumes_mid_epoch_and_after_epoch_end():
    loader = make_loader
    full = epoch_batches(loader(), 2)
    saved = loader(done=4)
    saved.sampler.set_epoch(2)
    state = saved.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 4 and state["samples"] == 12

    resumed = loader()
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == full[4:]  # exactly the rest of epoch 2
    assert [b.tolist() for b in resumed] == full  # the position applies once

    at_end = loader()
    at_end.load_state_dict({**state, "batches": 6, "samples": 18})  # saved after the last batch
    assert [b.tolist() for b in at_end] == epoch_batches(loader(), 3)


def test_loader_warns_when_data_settings_changed(caplog):
    dl = make_loader(batch_size=2)
    with caplog.at_level("WARNING", logger="mematte"):
        dl.load_state_dict({"epoch": 0, "batches": 1, "samples": 3, "seed": 1, "num_samples": 19, "batch_size": 3})
    assert "num_samples 19 → 20" in caplog.text and "batch_size 3 → 2" in caplog.text


# --------------------------------------------------------------------------- state, files, logs
def test_rng_state_round_trip_and_weights_only_load(tmp_path):
    import random

    import numpy as np

    state = resilience.collect_rng_state()
    expected = (torch.rand(3), np.random.rand(2), random.random())
    torch.save({"rng": state}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    resilience.restore_rng_state(loaded)
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_atomic_checkpoint_io_never_leaves_partial_file(tmp_path, monkeypatch):
    io = resilience.AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    assert resilience.checkpoint_is_intact(path) and resilience.checkpoint_step(path) == 1

    def dies_midway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # the temp file's handle
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert resilience.checkpoint_step(path) == 1  # the previous checkpoint is untouched
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left

    stale = path.parent / ".last.ckpt.999999999.abcd.tmp"  # a process killed mid-save
    stale.write_bytes(b"x")
    resilience.clean_stale_temp_files(path.parent)
    assert not stale.exists()


def test_csv_history_kept_up_to_checkpoint_step(tmp_path):
    log_dir = tmp_path / "csv"
    log_dir.mkdir()
    rows = [{"step": s, "train/loss": 1.0 + s, "val/sad": ""} for s in range(6)]
    with (log_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train/loss", "val/sad"])
        writer.writeheader()
        writer.writerows(rows)

    logger = CSVLogger(tmp_path, name="csv", version="")
    assert resilience.restore_csv_history(logger, before_step=4) == 4
    logger.log_metrics({"train/loss": 9.0, "train/new_key": 1.0}, step=4)
    logger.save()
    with (log_dir / "metrics.csv").open() as f:
        saved = list(csv.DictReader(f))
    assert [int(r["step"]) for r in saved] == [0, 1, 2, 3, 4]
    assert float(saved[2]["train/loss"]) == 3.0 and float(saved[4]["train/new_key"]) == 1.0
    assert not (log_dir / "metrics.before_resume.csv").exists()


# --------------------------------------------------------------------------- requeue
def test_requeue_decision():
    usr1, term = int(signal.SIGUSR1), int(signal.SIGTERM)
    job = {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "train"}
    assert resilience.requeue_job_id(usr1, [usr1], "auto", job) == "77"
    assert resilience.requeue_job_id(term, [usr1], "auto", job) is None  # scancel / preemption
    assert resilience.requeue_job_id(term, [usr1], "always", job) == "77"
    assert resilience.requeue_job_id(usr1, [usr1], "never", job) is None
    assert resilience.requeue_job_id(usr1, [usr1], "auto", {}) is None  # not a SLURM job
    assert resilience.requeue_job_id(usr1, [usr1], "auto", {**job, "SLURM_JOB_NAME": "bash"}) is None
    array = {**job, "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"}
    assert resilience.requeue_job_id(usr1, [usr1], "auto", array) == "70_3"


def fake_scontrol(tmp_path: Path, exit_code: int = 0) -> Path:
    """A ``scontrol`` that records its arguments in ``scontrol.log``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/scontrol.log"\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_requeue_runs_scontrol(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_scontrol(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    assert resilience.requeue_slurm_job("123")
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "123"]
    failing = tmp_path / "failing"
    failing.mkdir()
    monkeypatch.setenv("PATH", f"{fake_scontrol(failing, exit_code=1)}{os.pathsep}{os.environ['PATH']}")
    assert not resilience.requeue_slurm_job("123")


# --------------------------------------------------------------------------- in-process training
class SignalAt(L.Callback):
    """Test helper: send ``sig`` to this process at a training step or a validation batch."""

    def __init__(self, sig: str, step: int, during_validation: bool = False) -> None:
        self.sig, self.step, self.during_validation, self.sent = getattr(signal, sig), step, during_validation, False

    def _maybe_send(self, trainer: L.Trainer) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.sig)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.during_validation:
            self._maybe_send(trainer)

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.during_validation and trainer.state.fn == "fit":
            self._maybe_send(trainer)


SIGNAL_RUN = ["test=false", "validate_before_training=false", "callbacks.rich_progress_bar=null",
              "callbacks.last_checkpoint.every_n_train_steps=50", "data.train_set.image_size=96"]


def signal_cfg(make_cfg, sig: str, step: int, during_validation: bool = False, max_steps: int = 6):
    """A tiny training run (overrides ``SIGNAL_RUN``) that signals itself at ``step``."""
    cfg = make_cfg("train", [f"trainer.max_steps={max_steps}", *SIGNAL_RUN])
    with open_dict(cfg):
        cfg.callbacks.signal_at = {"_target_": "test_reliability.SignalAt", "sig": sig, "step": step,
                                   "during_validation": during_validation}
    return cfg


def test_usr1_under_slurm_saves_step_and_requeues(make_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", f"{fake_scontrol(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = signal_cfg(make_cfg, "SIGUSR1", step=3)
    with caplog.at_level("WARNING", logger="mematte"), pytest.raises(SystemExit) as stop:
        train(cfg)
    assert stop.value.code == 0
    run = Path(cfg.paths.output_dir)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # the step the signal arrived in, completed
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert "training stopped by SIGUSR1 at global step 3" in caplog.text and "requeued" in caplog.text
    state = resilience.read_run_state(run)
    assert state["status"] == "preempted" and state["attempts"][-1]["step"] == 3
    assert not (run / "metrics.json").exists()


def test_sigterm_during_validation_finishes_it_then_stops(make_cfg, caplog):
    # validation at step 2 (2 images); SIGTERM arrives at its first image
    cfg = signal_cfg(make_cfg, "SIGTERM", step=2, during_validation=True)
    with caplog.at_level("WARNING", logger="mematte"), pytest.raises(SystemExit):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    with (run / "csv" / "metrics.csv").open() as f:
        assert any(r.get("val/sad") for r in csv.DictReader(f)), "the interrupted validation did not finish"
    assert "keeping the previous last.ckpt" not in caplog.text


def test_rerun_resumes_in_place_from_stop(make_cfg, caplog):
    """Stopped by SIGTERM at step 2, the same command continues to max_steps in the same run."""
    cfg = signal_cfg(make_cfg, "SIGTERM", step=2, max_steps=4)
    with pytest.raises(SystemExit):
        train(cfg)
    cfg = make_cfg("train", ["trainer.max_steps=4", *SIGNAL_RUN])  # the same command, no signal
    with caplog.at_level("WARNING", logger="mematte"):
        train(cfg)
    assert "resuming the unfinished run" in caplog.text and "(global step 2)" in caplog.text
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["global_step"] == 4 and summary["resumed_from_step"] == 2
    state = resilience.read_run_state(cfg.paths.output_dir)
    assert [a.get("status") for a in state["attempts"]] == ["preempted", "finished"]
    assert state["status"] == "finished"


# --------------------------------------------------------------------------- numeric faults
class NaNImages(torch.utils.data.Dataset):
    """Wraps a train set; every image is NaN."""

    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.base[i])
        sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


class StepRecorder(L.Callback):
    """Snapshots of parameters, BatchNorm buffers and optimiser state around every step."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, Any]] = {}
        self.after: dict[int, dict[str, Any]] = {}
        self.names: list[list[str]] = []

    @staticmethod
    def _snapshot(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        return {
            "state": {k: v.detach().clone() for k, v in module.net.state_dict().items()},
            "optim": copy.deepcopy(trainer.optimizers[0].state_dict()["state"]),
        }

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = self._snapshot(trainer, module)
        self.names.append(list(batch["name"]))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = self._snapshot(trainer, module)


def tiny_trainer(cfg, module, callbacks: list[L.Callback]) -> tuple[L.Trainer, Any]:
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data, _convert_="partial")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=cfg.trainer.max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=callbacks,
    )
    return trainer, datamodule


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_loss_skips_step_and_is_counted(make_cfg):
    cfg = make_cfg("train", ["trainer.max_steps=3", "data.train_set.image_size=96"])
    module = build_module(cfg)
    compute = module.compute_losses

    def nan_at_step_1(batch, out):
        losses = compute(batch, out)
        if module.global_step == 1:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    module.compute_losses = nan_at_step_1
    recorder = StepRecorder()
    trainer, datamodule = tiny_trainer(cfg, module, [recorder])
    trainer.fit(module, datamodule=datamodule)

    bad_before, bad_after = recorder.before[1], recorder.after[1]
    assert same_state(bad_before["state"], bad_after["state"])  # weights and BN statistics
    assert all(same_state(bad_before["optim"][i], bad_after["optim"][i]) for i in bad_before["optim"])
    assert not same_state(recorder.before[2]["state"], recorder.after[2]["state"])  # training goes on
    assert trainer.global_step == 3 and module.nonfinite_steps == 1
    assert trainer.callback_metrics["train/nonfinite_steps"] == 1


def test_nonfinite_batches_stop_with_step_and_sample_names(make_cfg):
    cfg = make_cfg("train", ["trainer.max_steps=6", "module.max_nonfinite_steps=2", "data.train_set.image_size=96"])
    module = build_module(cfg)
    initial = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    recorder = StepRecorder()
    trainer, datamodule = tiny_trainer(cfg, module, [recorder])
    datamodule.train_set = NaNImages(datamodule.train_set)
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.fit(module, datamodule=datamodule)
    message = str(err.value)
    assert "2 consecutive steps (global steps 0-1)" in message
    assert str(recorder.names[-1]) in message and "module.max_nonfinite_steps" in message
    # nothing was learnt from NaN: weights and BatchNorm running statistics as initialised
    assert same_state(initial, {k: v.detach() for k, v in module.net.state_dict().items()})


def test_nonfinite_gradients_skip_step(make_cfg):
    """A finite loss with non-finite gradients (e.g. an overflow in backward) is skipped too."""
    cfg = make_cfg("train", ["trainer.max_steps=2", "data.train_set.image_size=96"])
    module = build_module(cfg)

    def poison_grads(trainer, pl_module, optimizer):
        next(p for p in pl_module.parameters() if p.grad is not None).grad[0] = float("inf")

    recorder = StepRecorder()
    poison = L.pytorch.callbacks.LambdaCallback(on_before_optimizer_step=poison_grads)
    trainer, datamodule = tiny_trainer(cfg, module, [poison, recorder])
    trainer.fit(module, datamodule=datamodule)
    assert module.nonfinite_steps == 2
    assert same_state(recorder.before[0]["state"], recorder.after[1]["state"])


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_metrics_and_checkpoint_records(make_cfg, tmp_path):
    summaries = []
    for run in range(2):
        cfg = make_cfg("train", ["seed=7", "trainer.max_steps=2", "data.train_set.image_size=96",
                                 "callbacks.rich_progress_bar=null", "resume=never"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run{run}")
        train(cfg)
        summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
        # the test loop's latency and peak memory are measurements of the machine, not results
        for key in ("latency_s", "peak_mib"):
            assert summary["test"].pop(key) >= 0
        summaries.append({k: summary[k] for k in ("val_untrained", "val_final", "test", "global_step")})
    assert summaries[0] == summaries[1]

    ckpt = torch.load(tmp_path / "run1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["mematte"]["seed"] == "7"
    assert set(ckpt["mematte"]["versions"]) >= {"mematte", "torch", "lightning", "python"}
    assert "torch" in ckpt["mematte"]["rng"]
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["seed"] == 7 and loader_state["batches"] == 2


# --------------------------------------------------------------------------- subprocess (slow)
SLOW_ARGS = [
    *[o for o in TINY_TRAIN if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))],
    "data.train_set.num_samples=30",  # 15 batches per epoch: the runs cross epoch boundaries
    "data.train_set.image_size=96",
    "data.val_set.num_samples=1",
    "data.test_set.num_samples=1",
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "callbacks.rich_progress_bar=null",
]


def start_train(root: Path, args: list[str], pythonpath: tuple[str, ...] = ()) -> subprocess.Popen:
    """``python train.py args`` from ``root`` (its logs/ go there), as a user would start it;
    ``pythonpath``: folders importable besides ``src/`` (config ``_target_`` of test helpers)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *pythonpath])}
    for name in RESUME_ENV:
        env.pop(name, None)
    out = (root / "out.txt").open("a")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=root, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, root: Path, timeout: int = 600) -> int:
    code = proc.wait(timeout=timeout)
    assert code == 0, f"train.py exited {code}:\n{(root / 'out.txt').read_text()[-4000:]}"
    return code


def only_run(root: Path) -> Path:
    runs = [p.parent for p in (root / "logs" / "train" / "runs").glob("*/csv")]
    assert len(runs) == 1, f"expected one run with logs, found {runs}"
    return runs[0]


def wait_for_checkpoint(proc: subprocess.Popen, root: Path, min_step: int, timeout: float = 300) -> int:
    """Poll until ``last.ckpt`` holds at least ``min_step``; returns its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended early:\n{(root / 'out.txt').read_text()[-3000:]}"
        for ckpt in (root / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"):
            step = resilience.checkpoint_step(ckpt)
            if step >= min_step:
                return step
        time.sleep(0.1)
    raise AssertionError("no checkpoint in time")


def loss_curve(run: Path) -> dict[int, float]:
    with (run / "csv" / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.mark.slow
def test_kill9_then_same_command_continues_identically(tmp_path):
    reference = tmp_path / "reference"
    finish(start_train(reference, SLOW_ARGS), reference)

    root = tmp_path / "killed"
    proc = start_train(root, SLOW_ARGS)
    step = wait_for_checkpoint(proc, root, min_step=20)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert step < 40 and step % 15 != 0, "killed at an epoch boundary: move min_step"
    finish(start_train(root, SLOW_ARGS), root)

    run = only_run(root)
    expected, got = loss_curve(only_run(reference)), loss_curve(run)
    assert sorted(got) == list(range(40)), "steps missing or repeated in the resumed csv"
    for s in range(40):
        assert got[s] == pytest.approx(expected[s], rel=1e-6, abs=1e-7), f"loss differs at step {s}"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == 40 and summary["resumed_from_step"] >= step
    assert "resuming the unfinished run" in (root / "out.txt").read_text()


@pytest.mark.slow
def test_sigterm_saves_current_step_and_rerun_resumes_same_wandb_run(tmp_path):
    args = [*(a for a in SLOW_ARGS if not a.startswith("logger=")), "logger=[csv,wandb]", "trainer.max_steps=20"]
    root = tmp_path / "term"
    proc = start_train(root, args)
    wait_for_checkpoint(proc, root, min_step=5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    out = (root / "out.txt").read_text()
    run = only_run(root)
    state = resilience.read_run_state(run)
    stopped = state["attempts"][-1]["step"]
    assert state["status"] == "preempted" and f"training stopped by SIGTERM at global step {stopped}" in out
    assert resilience.checkpoint_step(run / "checkpoints" / "last.ckpt") == stopped

    finish(start_train(root, args), root)
    assert f"(global step {stopped})" in (root / "out.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 20
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(state["wandb_id"]) for name in offline), offline


def test_a_best_checkpoint_deleted_before_the_kill_falls_back_to_the_one_that_replaced_it(tmp_path):
    """A kill between a validation that saved a new best (deleting the old) and the next
    last.ckpt: the resumed run names the deleted file as best; test the newest left instead."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    gone = ckpts / "best-step000010.ckpt"
    (ckpts / "last.ckpt").write_bytes(b"x")
    assert resilience.existing_best_checkpoint(gone, ckpts) is None  # nothing to fall back to
    older, newer = ckpts / "best-step000020.ckpt", ckpts / "best-step000030.ckpt"
    older.write_bytes(b"x")
    newer.write_bytes(b"x")
    os.utime(older, (1, 1))
    assert resilience.existing_best_checkpoint(gone, ckpts) == str(newer)
    assert resilience.existing_best_checkpoint(older, ckpts) == str(older)  # present: used as is
    assert resilience.existing_best_checkpoint("", None) is None
