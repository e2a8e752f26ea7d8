"""Bad files and bad options at the entry points: eval goes on past bad dataset files and lists
them; train/eval/predict stop on a wrong option or path with one message (no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import ROOT, TINY_TRAIN
from mematte.checkpoints import save_net_checkpoint
from mematte.cli import _evaluate, run_task
from mematte.data.datamodule import collate_eval
from mematte.data.folders import DatasetLayoutError, FolderEvalSet
from mematte.image_io import ImageReadError
from test_folders import rgb, save, write_eval

GOOD = ["a", "b"]
LAYOUT = [{"image": "test/image", "alpha": "test/alpha", "trimap": "test/trimap"}]


def bad_test_split(root: Path) -> None:
    """test/ with two good triplets and three bad ones: zero-byte, truncated, mis-sized trimap."""
    write_eval(root, "test/image", "test/alpha", "test/trimap", [*GOOD, "empty", "cut", "small"])
    (root / "test/image/empty.png").write_bytes(b"")
    whole = (root / "test/image/cut.png").read_bytes()
    (root / "test/image/cut.png").write_bytes(whole[: len(whole) // 2])  # header intact, data cut
    save(root / "test/trimap/small.png", rgb(0, 24, 32)[..., 0])


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random-initialised tiny ViTMatte in our checkpoint format."""
    from conftest import compose_config

    out = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config("train", TINY_TRAIN, out)
    torch.manual_seed(0)
    return save_net_checkpoint(instantiate(cfg.model), cfg.model, out / "net.ckpt")


def test_eval_set_skip_mode_lists_bad_files_and_loads_the_rest(tmp_path):
    bad_test_split(tmp_path)
    # error mode (training): construction names every bad file
    with pytest.raises(DatasetLayoutError) as err:
        FolderEvalSet(tmp_path, LAYOUT)
    assert all(f"{stem}.png" in str(err.value) for stem in ("empty", "cut", "small"))

    dataset = FolderEvalSet(tmp_path, LAYOUT, on_bad_file="skip")
    assert [e.name for e in dataset.entries] == GOOD and len(dataset.skipped) == 3
    # a file that breaks after the check (replaced, network storage) fails when loaded
    (tmp_path / "test/alpha/b.png").write_bytes(b"")
    samples = [dataset[i] for i in range(len(dataset))]
    assert "b.png" in samples[1]["skipped"] and "image" not in samples[1]
    batch = collate_eval(samples)
    assert batch["name"] == ["a"] and batch["image"].shape[0] == 1 and batch["skipped"] == [samples[1]["skipped"]]
    assert collate_eval(samples[1:]) == {"skipped": [samples[1]["skipped"]]}
    dataset.on_bad_file = "error"  # error mode fails the load, naming the file
    with pytest.raises(ImageReadError, match="b.png"):
        dataset[1]
    with pytest.raises(ValueError, match="on_bad_file"):
        FolderEvalSet(tmp_path, LAYOUT, on_bad_file="ignore")


def test_eval_scores_the_good_files_and_reports_the_bad(make_cfg, tmp_path, tiny_ckpt, caplog, monkeypatch):
    root = tmp_path / "data"
    bad_test_split(root)
    cfg = make_cfg("eval", [f"ckpt_path={tiny_ckpt}", "data=folder", f"data.root={root}", "data.num_workers=0",
                            "data.pin_memory=false", "data.persistent_workers=false", "callbacks=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    # a.png breaks after the dataset check: left out at load time, like the three found at the check
    from mematte.data.folders import FolderEvalSet as Checked

    original_init = Checked.__init__

    def check_then_break(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        (root / "test/alpha/a.png").write_bytes(b"")

    monkeypatch.setattr(Checked, "__init__", check_then_break)
    payload = _evaluate(cfg)
    assert payload["num_images"] == 1 and payload["metrics"]["sad"] >= 0
    named = sorted(s.split(":")[0].rsplit("/", 1)[-1] for s in payload["skipped"])
    assert named == ["a.png", "cut.png", "empty.png", "small.png"], payload["skipped"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["skipped"] == payload["skipped"]
    assert "fix or remove these files" in caplog.text and "cut.png" in caplog.text

    # b.png breaks after the check too: nothing scored is a clear error, not metrics of nothing
    def check_then_break_all(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        (root / "test/alpha/b.png").write_bytes(b"")

    monkeypatch.setattr(Checked, "__init__", check_then_break_all)
    with pytest.raises(ValueError, match="none of the test images could be read"):
        _evaluate(cfg)
    # and a set where the check itself finds nothing readable stops with every file listed
    caplog.clear()
    with pytest.raises(SystemExit):
        run_task(_evaluate, cfg)
    assert "b.png: empty file (0 bytes)" in caplog.text and "Traceback" not in caplog.text


def test_run_task_turns_user_errors_into_one_message(caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def wrapped(cfg):  # as Hydra's instantiate wraps a dataset's error
        try:
            raise DatasetLayoutError("test set at data.root=/x", ["data.root=/x does not exist: download it"])
        except DatasetLayoutError as err:
            raise RuntimeError("Error in call to target 'FolderEvalSet'") from err

    with pytest.raises(SystemExit) as stop:
        run_task(wrapped, None)
    assert stop.value.code == 1 and "data.root=/x does not exist: download it" in caplog.text

    def bug(cfg):
        raise RuntimeError("a programming error")

    with pytest.raises(RuntimeError, match="programming error"):  # not a user error: traceback
        run_task(bug, None)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(RuntimeError):
        run_task(wrapped, None)


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_entry_points_reject_bad_options_and_paths_without_tracebacks(tmp_path, tiny_ckpt):
    """What a user sees for each fault: exit code, the message, no traceback."""
    root = tmp_path / "data"
    bad_test_split(root)
    quiet = ["extras.print_config=false", f"hydra.run.dir={tmp_path / 'run'}"]
    cases = [
        # unknown group option: Hydra lists the options
        ("train.py", ["router=nonexistent", *quiet], "Could not find 'router/nonexistent'"),
        # unknown key
        ("train.py", ["module.lerning_rate=1", *quiet], "lerning_rate"),
        # a value outside the allowed set
        ("train.py", ["resume=sometimes", *quiet], "resume"),
        # missing dataset root: names it and says where to get the data
        ("train.py", ["data=composition1k", f"data.root={tmp_path / 'nowhere'}", *quiet],
         "does not exist: request the Adobe Deep Image Matting dataset"),
        # a checkpoint that is not there
        ("eval.py", [f"ckpt_path={tmp_path / 'missing.ckpt'}", *quiet], "missing.ckpt"),
        # wrong split name
        ("eval.py", [f"ckpt_path={tiny_ckpt}", "split=train", *quiet], "choose test or val"),
    ]
    for script, args, message in cases:
        proc = run_script(script, args, tmp_path)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1, (script, args, output[-3000:])
        assert message in output, (script, args, output[-3000:])
        assert "Traceback" not in output, (script, args, output[-3000:])

    # bad dataset files: eval scores the rest, lists the bad ones, exits 1
    proc = run_script("eval.py", [f"ckpt_path={tiny_ckpt}", "data=folder", f"data.root={root}",
                                  "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
                                  *quiet], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    payload = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert payload["num_images"] == 2 and len(payload["skipped"]) == 3
    assert "scored 2 images; 3 file problem(s) left out" in output
