"""Shared fixtures: composing Hydra configs at a tiny CPU setting."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# precision=auto stays fp32 on CPU (no bf16 accuracy-guard runs, no ~/.cache writes);
# tests/test_precision.py exercises the guard with this unset
os.environ.setdefault("MEMATTE_AUTO_BF16", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))

# Overrides that shrink any train config to seconds on a CPU.
TINY_TRAIN = [
    "trainer=cpu",
    "logger=csv",
    # 64² crops are 4×4 token grids: 14×14 windows would pad each to 196 tokens (12× the work)
    "backbone.window_size=4",
    "data.batch_size=2",
    "data.train_set.crop_size=64",
    "data.train_set.image_size=128",
    "data.val_set.num_samples=2",
    "data.val_set.min_size=64",
    "data.val_set.max_size=100",
    "data.test_set.num_samples=2",
    "data.test_set.min_size=64",
    "data.test_set.max_size=100",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "extras.print_config=false",
]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what imports and collection made (torch, Lightning, transformers, ...: ~600k
    objects) out of the garbage collector's sight. A full collection then scans only what the
    tests create: the profiler's ``gc.collect()`` before each test-loop forward, and Python's
    own full collections, drop from ~0.35 s each to near nothing."""
    gc.freeze()


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as Hydra would, with paths redirected to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("train", ["router=none"])`` → a composed config writing under tmp_path."""

    def _make(name: str = "train", overrides: list[str] | None = None, tiny: bool = True) -> DictConfig:
        extra = list(TINY_TRAIN) if (tiny and name == "train") else []
        return compose_config(name, extra + list(overrides or []), tmp_path)

    yield _make
    GlobalHydra.instance().clear()
