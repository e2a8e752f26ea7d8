"""Log hygiene: one line per event, a step-counting progress bar, no config tree where it is
noise, no deprecation warnings caused by our own configuration."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from conftest import ROOT, TINY_TRAIN, compose_config
from mematte.callbacks import StepProgressBar
from mematte.cli import route_lightning_logs_to_root
from mematte.loggers import WandbLogger

# "[2026-12-01 10:44:10,521][lightning.fabric.utilities.seed][INFO] - Seed set to 42"
HYDRA_LOG_LINE = re.compile(r"^\[[0-9-]+ [0-9:,]+\]\[(?P<logger>[^\]]+)\]\[(?P<level>[A-Z]+)\] - (?P<msg>.*)$")


@pytest.fixture
def lightning_loggers_restored():
    """Put Lightning's loggers (handlers, propagate) and the root's handlers back afterwards."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate,
                 list(logging.getLogger(n).filters)) for n in names}
    root_handlers = list(logging.getLogger().handlers)
    yield
    for name, (handlers, propagate, filters) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
        logging.getLogger(name).filters[:] = filters
    logging.getLogger().handlers[:] = root_handlers


def test_lightning_records_print_once_through_the_root_handlers(lightning_loggers_restored) -> None:
    # As under Hydra: the root logger has a console handler, and Lightning has its own
    # ("INFO: ..." to stderr) that prints every record a second time.
    console = io.StringIO()
    lightning_console = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(console))
    logging.getLogger("lightning").addHandler(logging.StreamHandler(lightning_console))
    route_lightning_logs_to_root()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.info("GPU available: False")
    rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    assert console.getvalue().splitlines() == ["GPU available: False"]
    assert lightning_console.getvalue() == ""


def test_step_based_training_shows_steps_of_the_run(capsys) -> None:
    # 2 batches per epoch, 5 steps: Lightning's own bar ends at "Epoch 2/-2 ... 1/2"
    trainer = L.Trainer(max_steps=5, max_epochs=-1, limit_train_batches=2, limit_val_batches=0,
                        callbacks=[StepProgressBar()], logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(BoringModel())
    out = capsys.readouterr().out
    assert re.search(r"step\s.*\b5/5\b", out), out
    assert "Epoch" not in out and "/-2" not in out


def test_epoch_based_training_keeps_lightnings_bar() -> None:
    bar = StepProgressBar()
    bar._trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False)  # as fit() attaches it
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_wandb_logger_passes_no_deprecated_setting(tmp_path: Path) -> None:
    # wandb warns "The anonymous setting has no effect" for any value of it, None included
    logger = WandbLogger(project="mematte-test", save_dir=str(tmp_path), offline=True)
    assert "anonymous" not in logger._wandb_init
    with pytest.raises(ValueError, match="anonymous"):
        WandbLogger(project="mematte-test", save_dir=str(tmp_path), anonymous=True)


@pytest.mark.parametrize(("name", "printed"), [("train", True), ("predict", False), ("eval", False),
                                               ("bench", False)])
def test_config_tree_only_where_asked(tmp_path: Path, name: str, printed: bool) -> None:
    assert compose_config(name, [], tmp_path).extras.print_config is printed
    assert compose_config(name, ["extras.print_config=true"], tmp_path).extras.print_config is True


@pytest.mark.slow
def test_tiny_training_output_has_each_line_once(tmp_path: Path) -> None:
    """What ``make train`` prints, at the tiny setting with both default loggers (CSV, W&B)."""
    args = [a for a in TINY_TRAIN if not a.startswith(("logger=", "extras.print_config"))]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.rstrip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    events = [m["logger"] + " " + m["msg"] for m in map(HYDRA_LOG_LINE.match, lines) if m]
    assert any("Seed set to" in e for e in events), "Lightning's records no longer reach the log"
    repeated = [e for e, n in Counter(events).items() if n > 1]
    assert not repeated, f"logged more than once: {repeated}"
    assert not [line for line in lines if line.startswith("INFO: ")], "Lightning's own console handler printed"
    assert not [a for a, b in zip(lines, lines[1:]) if a == b and not set(a) <= set("│ ")]
    text = "\n".join(lines)
    assert "CONFIG" in text  # train prints the tree by default
    assert "Epoch 0/-2" not in text and re.search(r"step\s.*\b2/2\b", text)
    assert "anonymous setting" not in text and "💡 Tip" not in text
