"""Faults that cost whole runs on clusters, injected for real on CPU (docs/reliability.md).

1. A DDP rank SIGKILLed mid-run (gloo, 2 processes): the survivor stops within a bound, naming
   the lost rank; rerunning the same command continues the loss curve exactly.      (slow)
2. The disk filling up while ``last.ckpt`` is written: the previous file stays, one message
   says what failed and how much space it needed, nothing half-written is left.     (fast;
   a real full tmpfs where the tests may mount one)
3. ``predict.py`` SIGKILLed at random points over 200 images, rerun each time: every image ends
   with all its outputs, no file is truncated or written twice, failures.json stays true. (slow)
4. Checkpoints written by another mematte version load, or fail naming the version and the fix.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY_TRAIN
from mematte import checkpoint_compat, resilience
from mematte.atomic import DiskFullError
from mematte.checkpoint_compat import CheckpointVersionError, KeyRename
from mematte.checkpoints import build_net, load_checkpoint, net_from_any
from mematte.cli import run_task, train
from test_predict_cli import disc_trimap, net_config, smooth_image
# _isolated_resume_env (autouse) keeps train()'s exported resume decision out of the other tests
from test_reliability import _isolated_resume_env, finish, loss_curve, only_run, start_train  # noqa: F401


def temp_files(root: Path) -> list[Path]:
    """Temporary files of atomic writers (``.<name>.<pid>.<hex>.tmp``) under ``root``."""
    return sorted(root.rglob(".*.tmp"))


# --------------------------------------------------------------------------- 1. lost DDP rank
DDP_STEPS = 12
DDP_ARGS = [
    *(o for o in TINY_TRAIN if o != "trainer=cpu" and not o.startswith(("trainer.max_steps",
                                                                          "trainer.val_check_interval"))),
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
    "trainer.sync_batchnorm=false",
    "data.train_set.num_samples=20",  # 5 steps per epoch on each of the 2 ranks: crosses epochs
    "data.train_set.image_size=96",
    f"trainer.max_steps={DDP_STEPS}",
    f"trainer.val_check_interval={DDP_STEPS}",
    "callbacks.last_checkpoint.every_n_train_steps=3",
    "callbacks.rich_progress_bar=null",
    "callbacks.lost_rank.timeout_s=30",
    "validate_before_training=false",
    "test=false",
]


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux ``/proc``)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def checkpoint_at_least(proc: subprocess.Popen, root: Path, step: int, timeout: float = 300) -> Path:
    """Poll until some run's ``last.ckpt`` holds ``step`` or more; returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended early:\n{(root / 'out.txt').read_text()[-3000:]}"
        for ckpt in (root / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"):
            if resilience.checkpoint_is_intact(ckpt) and resilience.checkpoint_step(ckpt) >= step:
                return ckpt
        time.sleep(0.1)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds DDP processes through Linux /proc")
def test_ddp_rank_killed_survivor_stops_naming_it_and_rerun_continues_exactly(tmp_path, record_property):
    reference = tmp_path / "reference"
    finish(start_train(reference, DDP_ARGS), reference)

    root = tmp_path / "killed"
    proc = start_train(root, DDP_ARGS)
    ckpt = checkpoint_at_least(proc, root, step=3)
    time.sleep(random.Random(17).uniform(0.0, 1.5))  # somewhere inside a later step
    ranks = child_pids(proc.pid)
    assert proc.poll() is None and len(ranks) == 1, f"rank 0 {proc.pid} should have launched rank 1: {ranks}"
    os.kill(ranks[0], signal.SIGKILL)
    killed_at = time.time()
    code = proc.wait(timeout=30 + 60)  # the watchdog's bound (timeout_s) plus teardown
    seconds_to_exit = time.time() - killed_at
    out = (root / "out.txt").read_text()

    assert code != 0, "the surviving rank must fail, not report success"
    assert f"DDP rank 1 (pid {ranks[0]}) was killed by SIGKILL" in out
    run = ckpt.parent.parent
    state = resilience.read_run_state(run)
    attempt = state["attempts"][-1]
    assert state["status"] == "failed" and attempt["status"] == "failed"
    assert attempt["lost_rank"]["rank"] == 1 and attempt["lost_rank"]["pid"] == ranks[0]
    stopped = resilience.checkpoint_step(ckpt)
    assert 3 <= stopped < DDP_STEPS and not temp_files(run / "checkpoints")

    finish(start_train(root, DDP_ARGS), root)  # the same command again
    assert only_run(root) == run
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == DDP_STEPS and summary["resumed_from_step"] == stopped
    statuses = [a["status"] for a in resilience.read_run_state(run)["attempts"]]
    assert statuses == ["failed", "finished"]

    expected, got = loss_curve(only_run(reference)), loss_curve(run)
    assert sorted(got) == list(range(DDP_STEPS)), "steps missing or repeated in the resumed csv"
    worst = max(abs(got[s] - expected[s]) / max(abs(expected[s]), 1e-12) for s in expected)
    record_property("ddp_seconds_to_exit", round(seconds_to_exit, 1))
    record_property("ddp_resumed_from_step", stopped)
    record_property("ddp_max_rel_loss_difference", worst)
    assert worst <= 1e-6, f"resumed loss curve differs from the uninterrupted run by {worst:.3g} (relative)"


def test_watchdog_ends_a_survivor_stuck_after_a_death(monkeypatch, caplog):
    """The bound when the survivor does not fail by itself (NCCL-like: stuck in a collective)."""
    ended, codes = threading.Event(), []
    monkeypatch.setattr(resilience.os, "_exit", lambda code: (codes.append(code), ended.set()))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with caplog.at_level("ERROR", logger="mematte"):
            resilience.LostRankWatchdog(timeout_s=1, poll_s=0.05, exit_code=3).start(children=[(1, child)])
            time.sleep(0.3)
            assert not ended.is_set()  # a live peer: nothing happens
            child.kill()
            start = time.time()
            assert ended.wait(timeout=10) and codes == [3]
        assert 1 <= time.time() - start < 1 + 2
        assert f"DDP rank 1 (pid {child.pid}) was killed by SIGKILL" in caplog.text
        assert "ending it with exit code 3" in caplog.text
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_kill_between_checkpoint_and_its_log_row_loses_no_row(tmp_path):
    """The window the DDP survivor sits in (a dead peer blocks the checkpoint's barrier): last.ckpt
    closes step 6 but step 5's row never reached metrics.csv; the resume restores it from the
    checkpoint, and the curve equals an uninterrupted run's."""
    args = [*(o for o in TINY_TRAIN if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))),
            "trainer.precision=32-true", "data.train_set.num_samples=20",
            "data.train_set.image_size=96", "trainer.max_steps=9", "trainer.val_check_interval=9",
            "callbacks.last_checkpoint.every_n_train_steps=3", "callbacks.rich_progress_bar=null",
            "validate_before_training=false", "test=false"]
    reference = tmp_path / "reference"
    finish(start_train(reference, args), reference)

    root = tmp_path / "killed"
    # the same command twice: the rerun starts at step 6 and never ends a step at global step 6
    killed = [*args, "+callbacks.kill._target_=fault_injection.KillAfterCheckpoint", "+callbacks.kill.at_step=6"]
    helpers = (str(Path(__file__).parent),)
    assert start_train(root, killed, pythonpath=helpers).wait(timeout=300) == -signal.SIGKILL
    run = only_run(root)
    assert resilience.checkpoint_step(run / "checkpoints" / "last.ckpt") == 6
    assert 5 not in loss_curve(run), "the kill came too late to test the window"

    finish(start_train(root, killed, pythonpath=helpers), root)
    assert only_run(root) == run
    expected, got = loss_curve(only_run(reference)), loss_curve(run)
    assert sorted(got) == list(range(9)), "steps missing or repeated in the resumed csv"
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-6


# --------------------------------------------------------------------------- 2. full disk
FULL_DISK_RUN = [
    "trainer.max_steps=2", "trainer.val_check_interval=100", "callbacks.last_checkpoint.every_n_train_steps=1",
    "backbone.depth=4", "backbone.global_block_indexes=[1,3]", "backbone.residual_block_indexes=[1,3]",
    "data.train_set.image_size=96", "test=false", "validate_before_training=false", "callbacks.rich_progress_bar=null",
]


def test_disk_full_while_writing_last_ckpt_keeps_the_previous_one(make_cfg, monkeypatch, caplog):
    """The second save of last.ckpt (step 2) hits ENOSPC half-way through the file."""
    real_save = torch.save
    saves: list[str] = []

    def fills_the_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        name = Path(getattr(f, "name", str(f))).name
        saves.append(name)
        if name.startswith(".last.ckpt.") and sum(s.startswith(".last.ckpt.") for s in saves) == 2:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: buffer.tell() // 2])  # what fitted on the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    cfg = make_cfg("train", FULL_DISK_RUN)
    with caplog.at_level("ERROR", logger="mematte"), pytest.raises(SystemExit) as stop:
        run_task(train, cfg)  # as train.py runs it
    monkeypatch.undo()
    assert stop.value.code == 1

    run = Path(cfg.paths.output_dir)
    last = run / "checkpoints" / "last.ckpt"
    size = last.stat().st_size
    assert resilience.checkpoint_is_intact(last) and resilience.checkpoint_step(last) == 1  # the previous one
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1
    assert temp_files(run) == [], "half-written files left behind"

    errors = [r.getMessage() for r in caplog.records if "DiskFullError" in r.getMessage()]
    assert len(errors) == 1, caplog.text
    message = errors[0]
    assert f"No space left on device writing {last}" in message and "the previous last.ckpt is intact" in message
    needed = int(message.split("bytes)")[0].rsplit("(", 1)[1])  # "it needs about 75.7 MiB (79385944 bytes)"
    assert 0.95 * size <= needed <= size, (needed, size)  # the tensors; pickled metadata comes on top
    state = resilience.read_run_state(run)
    assert state["status"] == "failed" and state["attempts"][-1]["error"].startswith("DiskFullError: No space left")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where this process may mount one (root on Linux)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:  # lazily if a file there is still open (a failed writer held by the traceback)
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_checkpoint_io_on_a_really_full_disk(small_tmpfs):
    """600 KB fits once on 1 MiB; the atomic save of the next needs room for both copies."""
    io_ = resilience.AtomicCheckpointIO()
    target = small_tmpfs / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"global_step": 1, "w": torch.zeros(150_000)}, target)
    with pytest.raises(DiskFullError) as err:
        io_.save_checkpoint({"global_step": 2, "w": torch.ones(150_000)}, target)
    assert "No space left on device" in str(err.value) and "(600000 bytes)" in str(err.value)
    assert err.value.needed == 600_000 and err.value.free is not None and err.value.free < 600_000
    assert resilience.checkpoint_step(target) == 1  # the previous one, whole
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


# --------------------------------------------------------------------------- 3. predict killed
N_IMAGES = 200
BAD = {"corrupt1": "corrupt", "corrupt2": "corrupt", "lonely1": "no trimap", "lonely2": "no trimap"}


def predict_inputs(root: Path, good: int = N_IMAGES - len(BAD)) -> tuple[Path, Path, Path]:
    """A tiny ViTMatte checkpoint, ``good`` images of 32×32 and the 4 :data:`BAD` ones, trimaps."""
    images, trimaps = root / "images", root / "trimaps"
    images.mkdir(parents=True)
    trimaps.mkdir()
    for k in range(good):
        Image.fromarray(smooth_image(32, 32, k)).save(images / f"img{k:03d}.png")
        Image.fromarray(disc_trimap(32, 32, band=3)).save(trimaps / f"img{k:03d}.png")
    for stem, fault in BAD.items():
        if fault == "corrupt":
            data = (images / "img000.png").read_bytes()
            (images / f"{stem}.png").write_bytes(data[: len(data) // 2])
            Image.fromarray(disc_trimap(32, 32, band=3)).save(trimaps / f"{stem}.png")
        else:
            Image.fromarray(smooth_image(32, 32, 999)).save(images / f"{stem}.png")
    torch.manual_seed(0)
    config = net_config(False)
    ckpt = root / "net.ckpt"
    net = build_net(config)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "mematte": {"net_config": config}}, ckpt)
    return ckpt, images, trimaps


def output_files(out: Path) -> dict[Path, tuple[int, int]]:
    """Every output PNG → (mtime_ns, size)."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.glob("*/*.png")}


def check_outputs_whole(out: Path) -> None:
    for path in out.glob("*/*.png"):
        with Image.open(path) as image:
            image.load()  # raises on a truncated file
            assert image.size == (32, 32), path


def complete(out: Path, stem: str) -> bool:
    return (out / "alpha" / f"{stem}.png").is_file() and (out / "cutout" / f"{stem}.png").is_file()


@pytest.mark.slow
def test_predict_killed_at_random_points_loses_and_rewrites_nothing(tmp_path, record_property):
    ckpt, images, trimaps = predict_inputs(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}

    def start(attempt: int) -> subprocess.Popen:
        args = [f"ckpt_path={ckpt}", f"input={images}", f"trimaps={trimaps}", f"out={out}", "tile=64",
                "context=32", "extras.print_config=false", f"hydra.run.dir={tmp_path / 'logs' / str(attempt)}"]
        log = (tmp_path / f"attempt{attempt}.txt").open("w")
        return subprocess.Popen([sys.executable, str(ROOT / "predict.py"), *args], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    rng = random.Random(5)
    first_seen: dict[Path, tuple[int, int]] = {}
    kills = 0
    for attempt, target in enumerate(sorted(rng.sample(range(5, N_IMAGES - 20), 5))):
        proc = start(attempt)
        while proc.poll() is None and len(list((out / "cutout").glob("*.png"))) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))  # anywhere: reading, matting, between two files, in a write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()

        check_outputs_whole(out)
        now = output_files(out)
        rewritten = [p for p, seen in first_seen.items() if now.get(p) != seen]
        assert not rewritten, f"written again after their first write: {rewritten[:5]}"
        first_seen.update({p: v for p, v in now.items() if p not in first_seen})
        if (out / "failures.json").exists():
            listed = json.loads((out / "failures.json").read_text())["failed"]
            assert not [f for f in listed if complete(out, Path(f["file"]).stem)], "a done image listed as failed"

    assert kills >= 4, "most kills should land while predict.py runs"
    final = start(99)
    assert final.wait(timeout=600) == 1, (tmp_path / "attempt99.txt").read_text()[-3000:]  # the bad ones failed

    check_outputs_whole(out)
    assert not [p for p, seen in first_seen.items() if output_files(out).get(p) != seen]
    assert temp_files(out) == [], "a killed write's temp file was not cleaned up"
    good = [p.stem for p in images.iterdir() if p.stem not in BAD]
    lost = [stem for stem in good if not complete(out, stem)]
    report = json.loads((out / "failures.json").read_text())
    assert report["finished"] and {Path(f["file"]).stem for f in report["failed"]} == set(BAD)
    assert report["done"] + report["skipped"] == len(good)
    record_property("predict_kills", kills)
    record_property("predict_images_lost", len(lost))
    assert lost == [], f"images without all their outputs: {lost[:10]}"


def test_failures_json_is_current_while_a_run_goes_on(tmp_path, monkeypatch):
    """An interrupted run's list is kept until each input comes up again, then corrected."""
    from mematte import predict as predict_module

    ckpt, images, trimaps = predict_inputs(tmp_path, good=6)  # corrupt1-2, img000-005, lonely1-2
    out = tmp_path / "out"
    stale = {"file": str(images / "img003.png"), "reason": "from an interrupted run"}
    out.mkdir()
    (out / "failures.json").write_text(json.dumps({"failed": [stale], "done": 0, "skipped": 0}))
    (out / "alpha").mkdir()
    (out / "alpha" / ".img001.png.999999999.abcd.tmp").write_bytes(b"half")  # left by a killed write

    seen: list[dict[str, Any]] = []
    write_json = predict_module.write_json

    def spy(path: Path, payload: dict[str, Any]) -> None:
        seen.append(json.loads(json.dumps(payload)))
        write_json(path, payload)

    monkeypatch.setattr(predict_module, "write_json", spy)
    options = predict_module.PredictOptions(ckpt_path=str(ckpt), input=str(images), trimaps=str(trimaps),
                                            out=str(out), tile=64, context=32)
    summary = predict_module.predict(options)
    assert summary.done == 6 and len(summary.failed) == 4
    files = [[Path(f["file"]).stem for f in s["failed"]] for s in seen]
    # failures are added as they happen; the stale entry goes as soon as img003 is written
    assert files == [["img003", "corrupt1"], ["img003", "corrupt1", "corrupt2"], ["corrupt1", "corrupt2"],
                     ["corrupt1", "corrupt2", "lonely1"], ["corrupt1", "corrupt2", "lonely1", "lonely2"],
                     ["corrupt1", "corrupt2", "lonely1", "lonely2"]]
    assert [s["finished"] for s in seen] == [False] * 5 + [True] and seen[-1]["done"] == 6
    assert temp_files(out) == []


# --------------------------------------------------------------------------- 4. other versions
OLD_HEAD = r"^decoder\.matting_head\.convs\.(.*)$"  # a rename to test with: convs → matting_convs


def old_checkpoint(path: Path, version: str | None, config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint as mematte ``version`` would have written it, its matting head under the old
    name ``decoder.matting_head.convs``; returns the net's weights (current names)."""
    torch.manual_seed(0)
    config = config or net_config(False)
    state = build_net(config).state_dict()
    stored = {"net." + k.replace("decoder.matting_head.matting_convs.", "decoder.matting_head.convs."): v
              for k, v in state.items()}
    entry: dict[str, Any] = {"net_config": config}
    if version is not None:
        entry["versions"] = {"mematte": version, "torch": "2.1.0"}
    torch.save({"state_dict": stored, "mematte": entry, "global_step": 7}, path)
    return state


def test_older_checkpoint_with_a_renamed_weight_loads(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(checkpoint_compat, "KEY_RENAMES",
                        (KeyRename("0.1.0", OLD_HEAD, r"decoder.matting_head.matting_convs.\1"),))
    path = tmp_path / "old.ckpt"
    state = old_checkpoint(path, "0.0.9")
    with caplog.at_level("INFO", logger="mematte"):
        net = net_from_any(path)  # eval.py / predict.py / teacher
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert "renamed" in caplog.text and "convs.0.weight → decoder.matting_head.matting_convs.0.weight" in caplog.text
    assert "net.decoder.matting_head.matting_convs.0.weight" in load_checkpoint(path)["state_dict"]
    # resuming a training run reads through the checkpoint IO plugin
    resumed = resilience.AtomicCheckpointIO().load_checkpoint(path)
    assert "net.decoder.matting_head.matting_convs.0.weight" in resumed["state_dict"]
    # a checkpoint written after the rename is left alone
    current = tmp_path / "current.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                "mematte": {"net_config": net_config(False), "versions": {"mematte": "0.1.0"}}}, current)
    assert net_from_any(current) is not None


def test_older_checkpoint_that_does_not_fit_names_the_version_and_the_fix(tmp_path):
    path = tmp_path / "old.ckpt"
    old_checkpoint(path, "0.0.9")  # no rename registered for it
    with pytest.raises(CheckpointVersionError) as err:
        net_from_any(path)
    message = str(err.value)
    assert f"{path} was written by mematte 0.0.9 (this is mematte 0.1.0)" in message
    assert "missing weights: decoder.matting_head.matting_convs.0.bias" in message
    assert "unexpected weights: decoder.matting_head.convs.0.bias" in message
    assert "pip install 'mematte==0.0.9'" in message and "--to-format official" in message
    with pytest.raises(CheckpointVersionError, match="mematte 0.0.9"):
        load_checkpoint(path)


def test_newer_checkpoint_that_does_not_fit_says_upgrade(tmp_path):
    config = net_config(False)
    config["backbone"]["layer_scale"] = 0.1  # an option a later version added
    path = tmp_path / "new.ckpt"
    torch.manual_seed(0)
    state = build_net(net_config(False)).state_dict()
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                "mematte": {"net_config": config, "versions": {"mematte": "9.0.0"}}}, path)
    with pytest.raises(CheckpointVersionError) as err:
        net_from_any(path)
    message = str(err.value)
    assert "written by mematte 9.0.0" in message and "layer_scale" in message
    assert "upgrade mematte to 9.0.0 or later" in message


def test_checkpoint_without_a_recorded_version_that_fits_loads(tmp_path):
    path = tmp_path / "unversioned.ckpt"
    torch.manual_seed(0)
    state = build_net(net_config(False)).state_dict()
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                "mematte": {"net_config": net_config(False)}}, path)
    net = net_from_any(path)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
