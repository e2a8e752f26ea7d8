"""The Hydra mains behind ``train.py`` and ``eval.py`` (the entry scripts only parse config)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mematte.atomic import atomic_write_text
from mematte.checkpoints import build_net, init_net_from, net_from_weights, read_weights
from mematte.inference import configure_routed_inference
from mematte.models.routed_block import INFERENCE_RULES

if TYPE_CHECKING:
    import lightning as L

    from mematte.resilience import ResumePlan

log = logging.getLogger("mematte")


# --------------------------------------------------------------------------- helpers
def apply_extras(cfg: DictConfig) -> None:
    """Run-wide settings: W&B mode default, warnings, CPU threads, config printout."""
    extras = cfg.get("extras") or {}
    # W&B has no server on many research machines: offline unless the user asked otherwise.
    os.environ.setdefault("WANDB_MODE", str(extras.get("wandb_mode", "offline")))
    os.environ.setdefault("WANDB_SILENT", "true")
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("threads"):
        import torch

        # CPU intra-op threads; parallel lanes of small jobs (make ablate) run one thread each
        torch.set_num_threads(int(extras.threads))
    if "lightning" in sys.modules:  # train and eval import it first; predict and bench need not
        route_lightning_logs_to_root()
    if extras.get("print_config"):
        print_config(cfg)


# Lightning's packages log through a console handler of their own (`lightning` prints
# "INFO: ..." to stderr) and also propagate to the root logger, where Hydra's handlers print
# the same record again (and write it to the job's log file).
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    """False for the "💡 Tip: ... try installing litlogger" line every Trainer logs."""
    return not str(record.msg).startswith("💡 Tip:")


def route_lightning_logs_to_root() -> None:
    """One line per Lightning log event: drop Lightning's own console handlers and let its
    records propagate to the root logger's handlers (Hydra's console and job log file).
    Also drops the product tip each Trainer logs (no event of the run).

    Does nothing while the root logger has no handler (outside Hydra), where Lightning's own
    handlers are the only ones that print.
    """
    if not logging.getLogger().handlers:
        return
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            # console handlers only (a FileHandler is a StreamHandler too, and one of ours)
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_an_advertisement not in rank_zero.filters:
        rank_zero.addFilter(_not_an_advertisement)


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


def _strict_json(value: Any) -> Any:
    """NaN/inf (e.g. an enrichment when no token was kept) → null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write strict JSON atomically (temp file + rename), so a crash never leaves half a file."""
    atomic_write_text(path, json.dumps(_strict_json(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


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
    the test metrics and the wall time; that file also marks the run as finished.

    Resuming (``resume: auto``, see :mod:`mematte.resilience`): if an unfinished earlier run
    of the same command has ``checkpoints/last.ckpt``, training continues in that run's
    directory from that checkpoint (same global step, optimiser, schedule, RNG and data
    order; same W&B run id). A stop signal (:class:`~mematte.resilience.Preemption`) ends
    the run with a saved checkpoint and the callback's exit code.

    ``reuse_finished``: when a finished run under ``<log_dir>/<task_name>`` has the same
    config fingerprint (:func:`mematte.resilience.config_fingerprint`: everything but paths
    and labels), its results are taken instead of training again.
    """
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from mematte import resilience

    apply_extras(cfg)
    plan = _plan_resume(cfg)
    loggers: list[Any] = []
    output_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    fingerprint = resilience.config_fingerprint(resolved)
    if cfg.get("reuse_finished") and not plan.resumed:
        twin = resilience.find_finished_twin(Path(cfg.paths.log_dir) / str(cfg.task_name), fingerprint,
                                             exclude=output_dir)
        if twin is not None:
            plan.release()
            return _reuse_finished(twin, output_dir, resolved)
    attempt_open = False  # run_state.json has an attempt this call must close
    trainer: L.Trainer | None = None
    try:
        L.seed_everything(cfg.seed, workers=True)
        run_state = _start_attempt(cfg, plan)
        attempt_open = True

        datamodule = instantiate(cfg.data, _convert_="partial")
        module = build_module(cfg)
        loggers = instantiate_list(cfg.get("logger"))
        callbacks = instantiate_list(cfg.get("callbacks"))
        if not loggers:  # nothing to report learning rates to
            callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        if plan.resumed and trainer.is_global_zero:
            _continue_logs(loggers, plan)
        _log_run_config(loggers, cfg)

        summary: dict[str, Any] = {"config": resolved, "config_fingerprint": fingerprint}
        if run_state.get("val_untrained") is not None:
            summary["val_untrained"] = run_state["val_untrained"]
        elif cfg.get("validate_before_training") and not trainer.fast_dev_run and not plan.resumed:
            trainer.validate(module, datamodule=datamodule, verbose=False)
            summary["val_untrained"] = scalar_metrics(trainer.callback_metrics, "val/")
            log.info("untrained validation: %s", summary["val_untrained"])
            if trainer.is_global_zero:
                resilience.update_run_state(output_dir, val_untrained=summary["val_untrained"])

        start = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path)
        except SIGTERMException:
            attempt_open = False  # closed as "preempted" by:
            _stopped_by_signal(cfg, trainer, callbacks)  # raises SystemExit
        summary["train_seconds"] = time.perf_counter() - start
        summary["global_step"] = trainer.global_step
        summary["val_final"] = scalar_metrics(trainer.callback_metrics, "val/")
        summary["resumed_from_step"] = plan.start_step if plan.resumed else None

        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        best = resilience.existing_best_checkpoint(best, getattr(ckpt_cb, "dirpath", None)) or ""
        summary["best_checkpoint"] = best or None
        best_score = getattr(ckpt_cb, "best_model_score", None) if ckpt_cb is not None else None

        if cfg.get("test"):
            rules = _rules_to_test(cfg, module.net)
            by_rule: dict[str, dict[str, float]] = {}
            if rules:
                # the test split under each other inference rule of the learned routers; the
                # configured rule runs last, so loggers end on the run's own test metrics
                configured = module.net.backbone.routed_blocks[0].inference
                for rule in (r for r in rules if r != configured):
                    configure_routed_inference(module.net, inference=rule)
                    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
                    by_rule[rule] = scalar_metrics(trainer.callback_metrics, "test/")
                configure_routed_inference(module.net, inference=configured)
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            summary["test"] = scalar_metrics(trainer.callback_metrics, "test/")
            if rules:
                summary["test_rules"] = {r: by_rule.get(r, summary["test"]) for r in rules}
                # loggers saw every rule's test under test/… (the configured one last): give
                # them each rule's figures under their own names too (W&B summaries, reports)
                flat = {f"test_rules/{r}/{k}": v for r, values in summary["test_rules"].items()
                        for k, v in values.items() if math.isfinite(v)}
                for logger in trainer.loggers:
                    logger.log_metrics(flat, step=trainer.global_step)

        if trainer.is_global_zero:
            write_json(output_dir / "metrics.json", summary)
            _end_attempt(output_dir, "finished", trainer.global_step)
            log.info("train summary written to %s", output_dir / "metrics.json")
        attempt_open = False
        return float(best_score) if best_score is not None else None
    except BaseException as err:
        # a config error, a crash or Ctrl-C: say so in run_state.json (and the report)
        if attempt_open and (trainer is None or trainer.is_global_zero):
            status = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
            _end_attempt(output_dir, status, trainer.global_step if trainer is not None else plan.start_step,
                         error=f"{type(err).__name__}: {err}")
        raise
    finally:
        _finish_wandb(loggers)
        plan.release()


def _reuse_finished(twin: Path, output_dir: Path, config: dict[str, Any]) -> float | None:
    """``reuse_finished``: this job computes what the finished run ``twin`` computed (same
    config fingerprint: e.g. the default setting shared by several ablations, same seed), so
    take its results instead of training again: ``metrics.json`` (with this job's config and
    ``reused_from``) and the CSV learning curve. Checkpoints stay in ``twin``."""
    import shutil

    from mematte import resilience

    summary = json.loads((twin / "metrics.json").read_text())
    summary["config"] = config
    summary["reused_from"] = str(twin.resolve())
    log.info("an identical run finished in %s: its results are reused (reuse_finished=false trains "
             "again)", twin)
    if (twin / "csv" / "metrics.csv").is_file():
        (output_dir / "csv").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(twin / "csv" / "metrics.csv", output_dir / "csv" / "metrics.csv")
    write_json(output_dir / "metrics.json", summary)
    resilience.update_run_state(output_dir, status="finished", reused_from=str(twin.resolve()))
    best = (summary.get("val_final") or {}).get("sad")
    return float(best) if best is not None else None


def _rules_to_test(cfg: DictConfig, net: Any) -> list[str]:
    """Inference rules (``test_inference_rules``) to score the test split under, besides the
    run's own: only for nets whose routers learn their token counts (``selection: gumbel``)."""
    rules = list(cfg.get("test_inference_rules") or [])
    for rule in rules:
        if rule not in INFERENCE_RULES:
            raise ValueError(f"test_inference_rules: {rule!r} is not a rule; choose from {list(INFERENCE_RULES)}")
    blocks = getattr(net.backbone, "routed_blocks", [])
    if not blocks or any(block.selection != "gumbel" for block in blocks):
        return []
    return rules


def _log_run_config(loggers: list[Any], cfg: DictConfig) -> None:
    """Give every logger the resolved config, the command-line overrides and the sweep name,
    so runs read back from W&B (``mematte.report``) know what they varied."""
    if not loggers:
        return
    params: dict[str, Any] = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "overrides": _task_overrides() or [],
        "sweep_name": cfg.get("sweep_name"),
    }
    for logger in loggers:
        logger.log_hyperparams(params)


def _finish_wandb(loggers: list[Any]) -> None:
    """Close this job's W&B run: in a multirun the next job would otherwise log into it."""
    from lightning.pytorch.loggers import WandbLogger

    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _plan_resume(cfg: DictConfig) -> ResumePlan:
    """Pick this run's directory and start checkpoint (see ``resume`` in conf/train.yaml).

    When an earlier run is continued, ``paths.output_dir`` is pointed at it, so that
    checkpoints, csv and W&B files go on where they were; this attempt's own Hydra
    directory keeps its config and a note, and the log also goes to the resumed run's file.
    """
    from mematte import resilience

    overrides = _task_overrides()  # None outside a Hydra app: nothing to match earlier runs by
    job_name = HydraConfig.get().job.name if overrides is not None else "train"
    fresh_dir = Path(cfg.paths.output_dir)
    if overrides is None:
        return resilience.plan_resume(fresh_dir, fresh_dir, [], "never", cfg.get("ckpt_path"))
    plan = resilience.plan_resume(
        fresh_dir,
        Path(cfg.paths.log_dir) / str(cfg.task_name),
        overrides,
        cfg.get("resume", "auto"),
        cfg.get("ckpt_path"),
    )
    if plan.resumed and plan.run_dir != fresh_dir.resolve():
        with open_dict(cfg):
            cfg.paths.output_dir = str(plan.run_dir)
        if plan.lock is not None:  # the deciding process (DDP children only follow)
            resilience.update_run_state(fresh_dir, status="resumed_elsewhere", resumed_run=str(plan.run_dir))
            plan.log_handler = resilience.attach_log_file(plan.run_dir, job_name)
    if plan.resumed:
        log.warning(
            "resuming the unfinished run %s from %s (global step %d); `resume=never` starts afresh",
            plan.run_dir, plan.ckpt_path, plan.start_step,
        )
        resilience.clean_stale_temp_files(Path(plan.ckpt_path).parent)
    return plan


def _start_attempt(cfg: DictConfig, plan: ResumePlan) -> dict[str, Any]:
    """Record this attempt in ``run_state.json`` and give W&B loggers the run's id."""
    from mematte import resilience

    output_dir = Path(cfg.paths.output_dir)
    state = resilience.read_run_state(output_dir) if plan.resumed else {}
    wandb_keys = [
        k for k, c in (cfg.get("logger") or {}).items()
        if c is not None and str(c.get("_target_", "")).endswith("WandbLogger")
    ]
    if wandb_keys:
        state.setdefault("wandb_id", resilience.new_wandb_id())
        with open_dict(cfg):
            for key in wandb_keys:
                cfg.logger[key].id = state["wandb_id"]
                if plan.resumed:  # continue the same W&B run (also offline: `wandb sync` merges)
                    cfg.logger[key].resume = "allow"
                    if state.get("wandb_name"):
                        cfg.logger[key].name = state["wandb_name"]
                state.setdefault("wandb_name", cfg.logger[key].get("name"))
    if plan.lock is not None:
        attempts = list(state.get("attempts", []))
        hydra_dir = _hydra_output_dir() or str(output_dir)
        attempts.append(resilience.attempt_record(plan.start_step, hydra_dir))
        # a new run replaces whatever an earlier run left in a reused directory
        state = resilience.update_run_state(
            output_dir, replace=not plan.resumed,
            **{**state, "status": "running", "attempts": attempts, "overrides": _task_overrides()},
        )
    return state


def _task_overrides() -> list[str] | None:
    """This run's command-line overrides (what resume discovery matches on), if under Hydra."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return None


def _hydra_output_dir() -> str | None:
    try:
        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None


def _end_attempt(output_dir: Path, status: str, step: int, **extra: Any) -> None:
    """Close this attempt's entry in ``run_state.json`` and set the run status."""
    from mematte import resilience

    state = resilience.read_run_state(output_dir)
    attempts = list(state.get("attempts", [])) or [{}]
    attempts[-1] = {**attempts[-1], "ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": status,
                    "step": step, **extra}
    resilience.update_run_state(output_dir, status=status, attempts=attempts)


def _continue_logs(loggers: list[Any], plan: ResumePlan) -> None:
    """Keep the interrupted attempt's CSV rows up to the checkpoint's step."""
    from lightning.pytorch.loggers import CSVLogger

    from mematte import resilience

    pending = resilience.checkpoint_log_rows(plan.ckpt_path) if plan.ckpt_path else []
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            kept = resilience.restore_csv_history(logger, before_step=plan.start_step, pending_rows=pending)
            log.info("kept %d csv rows of the interrupted attempt (steps < %d)", kept, plan.start_step)


def _stopped_by_signal(cfg: DictConfig, trainer: L.Trainer, callbacks: list[Any]) -> None:
    """Training left ``fit`` on a stop signal: record it, log it, exit with the set code."""
    from mematte import resilience

    stopper = next((c for c in callbacks if isinstance(c, resilience.Preemption)), None)
    message = (
        stopper.describe(trainer.global_step) if stopper is not None
        else f"training stopped by SIGTERM at global step {trainer.global_step}; rerun the same command to resume"
    )
    if trainer.is_global_zero:
        _end_attempt(Path(cfg.paths.output_dir), "preempted", trainer.global_step,
                     checkpoint=getattr(stopper, "saved_checkpoint", None))
    log.warning(message)
    raise SystemExit(stopper.exit_code if stopper is not None else 0)


# --------------------------------------------------------------------------- eval
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score a checkpoint on a split at full resolution; writes a metrics JSON.

    The JSON goes to this run's output dir and next to the checkpoint's run
    (``<run>/eval/<data>_<split>.json``). Returns the metrics (SAD, MSE, Grad, Conn, kept
    ratios for MEMatte, forward-pass ``latency_s`` and ``peak_mib`` per image).

    With ``baseline=NAME`` (``conf/baseline/``: closed_form, knn, lkm, fill_half) a
    training-free classical method (:mod:`mematte.baselines`) is scored instead, by the same
    test loop and metrics; ``ckpt_path`` is then not used, and the JSON (this run's output dir
    only) carries ``"baseline": NAME`` and ``"checkpoint": null``.
    """
    return _evaluate(cfg)["metrics"]


def _evaluate(cfg: DictConfig) -> dict[str, Any]:
    """:func:`evaluate`, returning the whole JSON payload (with ``skipped``)."""
    import lightning as L

    from mematte.data.folders import format_problems
    from mematte.lit_module import MattingModule
    from mematte.presets import inference_rules

    apply_extras(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.split not in ("test", "val"):
        raise ValueError(f"split={cfg.split!r}: choose test or val")
    # routing overrides change the model: keep their results apart from the plain ones
    overrides = {k: v for k, v in (cfg.get("routed_inference") or {}).items() if v is not None}
    has_ckpt = not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path") is not None
    baseline = None
    if cfg.get("baseline") is not None:  # a training-free method (mematte.baselines) in place of a net
        if has_ckpt:
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path} and baseline= both given: score either a checkpoint or a baseline"
            )
        baseline = choice("baseline") or str(cfg.baseline.get("method"))
        net = instantiate(cfg.baseline, _convert_="all")
        ckpt_path = weights = None
        ours = False
        if overrides:
            log.warning("routed_inference options are set but baseline=%s routes nothing: ignored", baseline)
            overrides = {}
    elif not has_ckpt:
        raise ValueError(
            "ckpt_path is required: `python eval.py ckpt_path=PATH` (a .ckpt of ours, an official "
            "ViTMatte/MEMatte .pth or a Hugging Face folder), or score a training-free method with "
            "`baseline=closed_form` (or knn, lkm, fill_half)"
        )
    else:
        # ours, an official ViTMatte/MEMatte .pth, a Hugging Face folder or hub id
        # (mematte.checkpoints); read once: the format and the step come with the weights
        weights = read_weights(cfg.ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))
        ckpt_path = weights.source
        net = net_from_weights(weights)
        ours = weights.format == "mematte"
        configure_routed_inference(net, **overrides)
    preset = str(cfg.get("preset") or "default")
    if baseline is not None and preset != "default":
        log.warning("preset=%s describes the official nets' scripts; baseline=%s is scored as is", preset, baseline)
        preset = "default"
    if baseline is None:
        rules = inference_rules(preset, bool(net.is_routed))
        if rules.max_tokens is not None and "max_tokens" not in overrides:
            configure_routed_inference(net, max_tokens=rules.max_tokens)
    module = MattingModule(net=net, eval_region=cfg.eval_region, inference_preset=preset)

    # only the scored split is built: evaluating needs neither the training data (nor its
    # batch augmentation) nor the other split
    data_cfg = cfg.data.copy()
    with open_dict(data_cfg):
        for key in ("augment", "train_set", "val_set", "test_set"):
            if key != f"{cfg.split}_set" and key in data_cfg:
                data_cfg[key] = None
    datamodule = instantiate(data_cfg, _convert_="partial")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = instantiate_list(cfg.get("callbacks"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    start = time.perf_counter()
    trainer.test(module, dataloaders=loader, verbose=True)
    seconds = time.perf_counter() - start
    metrics = scalar_metrics(trainer.callback_metrics, "test/")
    # files the dataset left out when it was built, then those that failed to decode
    skipped = list(getattr(loader.dataset, "skipped", [])) + module.skipped_samples
    scored = len(loader.dataset) - len(module.skipped_samples)
    if scored <= 0:
        raise ValueError(format_problems(f"none of the {cfg.split} images could be read", skipped))

    data_name = choice("data") or "data"
    payload = {
        "checkpoint": str(ckpt_path.resolve()) if ckpt_path is not None else None,
        "baseline": baseline,
        "data": data_name,
        "split": cfg.split,
        "region": cfg.eval_region,
        "num_images": scored,
        "metrics": metrics,
        "seconds": seconds,
        "checkpoint_step": weights.step if weights is not None else None,
        "skipped": skipped,
    }
    payload["routed_inference"] = overrides
    payload["preset"] = preset
    write_json(Path(cfg.paths.output_dir) / "metrics.json", payload)
    if ours:  # next to the training run (<run>/checkpoints/x.ckpt → <run>/eval/), for reports
        run_dir = ckpt_path.resolve().parent.parent
        suffix = "".join(f"_{k}-{v}" for k, v in sorted(overrides.items()))
        suffix += f"_preset-{preset}" if preset != "default" else ""
        write_json(run_dir / "eval" / f"{data_name}_{cfg.split}{suffix}.json", payload)
    log.info("metrics: %s", metrics)
    if skipped:
        log.warning("%s", format_problems(
            f"scored {scored} images; {len(skipped)} file problem(s) left out (also under 'skipped' in "
            f"{Path(cfg.paths.output_dir) / 'metrics.json'}); fix or remove these files and rerun",
            skipped))
    return payload


def eval_main(cfg: DictConfig) -> int:
    """``eval.py``: evaluate; exit code 1 when files were left out (the rest is still scored)."""
    payload = run_task(_evaluate, cfg)
    return 1 if payload["skipped"] else 0


# --------------------------------------------------------------------------- user errors
# Errors that describe a wrong input or option and say what to do: shown as one message, not a
# traceback. Their subclasses include DatasetLayoutError, ImageReadError, WeightsMismatchError.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err`` (Hydra's InstantiationException wraps it), or None."""
    from omegaconf.errors import MissingMandatoryValue

    from mematte.atomic import DiskFullError
    from mematte.inference import MemoryBudgetError
    from mematte.lit_module import NonFiniteTrainingError

    kinds = (*USER_ERRORS, MissingMandatoryValue, MemoryBudgetError, NonFiniteTrainingError, DiskFullError)
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, kinds):
            return err
        err = err.__cause__ or err.__context__
    return None


def run_script_in_process(script: str | Path, argv: Sequence[str]) -> int | str | None:
    """``python <script> argv`` in this process: the entry script (``train.py``, ``eval.py``,
    ...) runs as ``__main__`` and its ``@hydra.main`` parses ``argv``. Saves a fresh
    interpreter's imports (tests, ``experiments/gpu_check.sh``). Afterwards ``sys.argv``, the
    root logger (Hydra adds the job's handlers), Hydra's global state and ``os.environ`` (e.g.
    the resume decision ``train()`` exports for DDP children) are as they were.

    Returns the script's exit code (None or 0: success).
    """
    import runpy
    import sys

    from hydra.core.global_hydra import GlobalHydra

    root, environ, old_argv = logging.getLogger(), dict(os.environ), sys.argv
    level, handlers = root.level, list(root.handlers)
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        return stop.code
    finally:
        sys.argv = old_argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
        os.environ.clear()
        os.environ.update(environ)
    return None


def run_task(task: Any, cfg: DictConfig) -> Any:
    """Run an entry point's task; a user error ends the process with its message and code 1.

    The message (which names the file or option and the fix) is logged once, to the console
    and the run's log file; no traceback, unless ``HYDRA_FULL_ERROR=1`` asks for one (then the
    error propagates as usual). In a multirun the error propagates after the message, so that
    Hydra marks this job failed and goes on with the other jobs.
    """
    try:
        return task(cfg)
    except Exception as err:
        cause = _user_error(err)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", type(cause).__name__, cause)
        if _multirun():
            raise
        log.error("(set HYDRA_FULL_ERROR=1 for the traceback)")
        raise SystemExit(1) from None


def _multirun() -> bool:
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra app
        return False
