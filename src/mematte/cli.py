"""The Hydra mains behind ``train.py`` and ``eval.py`` (the entry scripts only parse config)."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mematte.atomic import atomic_write_text
from mematte.checkpoints import build_net, detect_format, init_net_from, load_checkpoint, net_from_any
from mematte.inference import configure_routed_inference

log = logging.getLogger("mematte")


# --------------------------------------------------------------------------- helpers
def apply_extras(cfg: DictConfig) -> None:
    """Run-wide settings: W&B mode default, warnings, config printout."""
    extras = cfg.get("extras") or {}
    # W&B has no server on many research machines: offline unless the user asked otherwise.
    os.environ.setdefault("WANDB_MODE", str(extras.get("wandb_mode", "offline")))
    os.environ.setdefault("WANDB_SILENT", "true")
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config(cfg)


def print_config(cfg: DictConfig) -> None:
    """Print the composed config as a rich tree (one branch per top-level group)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key))
        text = OmegaConf.to_yaml(value, resolve=False) if OmegaConf.is_config(value) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a mapping config (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def scalar_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{"val/sad": tensor(1.2), ...}`` → ``{"sad": 1.2}`` for keys starting with ``prefix``."""
    return {
        k[len(prefix) :]: float(v)
        for k, v in metrics.items()
        if k.startswith(prefix)
    }


def build_module(cfg: DictConfig):
    """The LightningModule of a train config, with the resolved net config attached."""
    net = build_net(cfg.model)
    if cfg.get("init_from"):
        init_net_from(net, cfg.init_from)
    module = instantiate(cfg.module, net=net, _convert_="partial")
    # Set after instantiation: passed as a kwarg, Hydra would instantiate its `_target_`s.
    module.hparams.net_config = OmegaConf.to_container(cfg.model, resolve=True)
    return module


def choice(group: str) -> str | None:
    """The option picked for a config group in this Hydra run (e.g. ``data`` → ``synthetic``)."""
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # not inside a Hydra app (e.g. called from a notebook)
        return None


# --------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> float | None:
    """Fit, then test the best checkpoint. Returns the best validation SAD (for sweepers).

    Writes ``<output_dir>/metrics.json`` with the untrained and final validation metrics,
    the test metrics and the wall time.
    """
    import lightning as L

    apply_extras(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = instantiate(cfg.data, _convert_="partial")
    module = build_module(cfg)
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = instantiate_list(cfg.get("callbacks"))
    if not loggers:  # nothing to report learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    summary: dict[str, Any] = {"config": OmegaConf.to_container(cfg, resolve=True)}
    if cfg.get("validate_before_training") and not trainer.fast_dev_run:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        summary["val_untrained"] = scalar_metrics(trainer.callback_metrics, "val/")
        log.info("untrained validation: %s", summary["val_untrained"])

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    summary["train_seconds"] = time.perf_counter() - start
    summary["global_step"] = trainer.global_step
    summary["val_final"] = scalar_metrics(trainer.callback_metrics, "val/")

    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    summary["best_checkpoint"] = best or None
    best_score = getattr(ckpt_cb, "best_model_score", None) if ckpt_cb is not None else None

    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        summary["test"] = scalar_metrics(trainer.callback_metrics, "test/")

    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", summary)
        log.info("train summary written to %s", output_dir / "metrics.json")
    return float(best_score) if best_score is not None else None


# --------------------------------------------------------------------------- eval
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score a checkpoint on a split at full resolution; writes a metrics JSON.

    The JSON goes to this run's output dir and next to the checkpoint's run
    (``<run>/eval/<data>_<split>.json``).
    """
    import lightning as L

    from mematte.lit_module import MattingModule

    apply_extras(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.split not in ("test", "val"):
        raise ValueError(f"split={cfg.split!r}: choose test or val")
    ckpt_path = Path(cfg.ckpt_path)
    # ours, an official ViTMatte/MEMatte .pth or a Hugging Face folder (mematte.checkpoints)
    net = net_from_any(ckpt_path)
    ours = detect_format(ckpt_path) == "mematte"
    step = load_checkpoint(ckpt_path).get("global_step") if ours else None
    configure_routed_inference(net, **(cfg.get("routed_inference") or {}))
    module = MattingModule(net=net, eval_region=cfg.eval_region)

    datamodule = instantiate(cfg.data, _convert_="partial")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    loggers = instantiate_list(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    start = time.perf_counter()
    trainer.test(module, dataloaders=loader, verbose=True)
    seconds = time.perf_counter() - start
    metrics = scalar_metrics(trainer.callback_metrics, "test/")

    data_name = choice("data") or "data"
    payload = {
        "checkpoint": str(ckpt_path.resolve()),
        "data": data_name,
        "split": cfg.split,
        "region": cfg.eval_region,
        "num_images": len(loader.dataset),
        "metrics": metrics,
        "seconds": seconds,
        "checkpoint_step": step,
    }
    # routing overrides change the model: keep their results apart from the plain ones
    overrides = {k: v for k, v in (cfg.get("routed_inference") or {}).items() if v is not None}
    payload["routed_inference"] = overrides
    write_json(Path(cfg.paths.output_dir) / "metrics.json", payload)
    if ours:  # next to the training run (<run>/checkpoints/x.ckpt → <run>/eval/), for reports
        run_dir = ckpt_path.resolve().parent.parent
        suffix = "".join(f"_{k}-{v}" for k, v in sorted(overrides.items()))
        write_json(run_dir / "eval" / f"{data_name}_{cfg.split}{suffix}.json", payload)
    log.info("metrics: %s", metrics)
    return metrics
