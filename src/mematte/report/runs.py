"""Training runs: reading job folders, offline W&B runs and the W&B API; grouping into
ablations, dedupe of reruns, the settings a sweep varies and each run's seed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mematte.report._common import (
    BLOCK_KEY,
    METRICS,
    RULES,
    ReportError,
    config_lookup,
    flatten,
    log,
    numbers,
    read_json,
    read_yaml,
    undefined_keys,
)

# where conf/sweep/_base.yaml puts sweeps (logs/<task>/multiruns/<sweep>_<time>/<job>/), and
# logs/sweeps for sweeps launched with hydra.sweep.dir there
DEFAULT_RUNS = ("logs/train/multiruns", "logs/sweeps")
# Override keys that never describe the ablated setting (where files go, logging, launcher).
IGNORED_KEY_PREFIXES = ("hydra.", "paths.", "logger", "extras.", "tags", "task_name", "sweep", "resume",
                        "ckpt_path", "callbacks", "debug")
# The seed: runs of one setting that differ only by it are one row (mean ± std over seeds)
SEED_KEY = "seed"
# The paper's ablations in its order (conf/sweep/*); other sweeps follow alphabetically.
SWEEP_ORDER = ("ablation_router", "ablation_ltrm", "ablation_no_ltrm", "ablation_keep_ratio", "ablation_topk_keep",
               "ablation_objective", "ablation_distill")


# =========================================================================== runs
@dataclass
class Run:
    """One training run, however it was found.

    Attributes:
        name: job folder relative to its ``--runs`` root, or the W&B run name.
        sweep: the ablation it belongs to (``sweep_name``, else its multirun folder).
        status: ``finished``, or why it has no final metrics (``failed: ...``, ``crashed: ...``).
        overrides: Hydra command-line overrides, ``key → value`` (``+``/``++`` stripped).
        config: resolved config (from ``metrics.json``; else ``.hydra/config.yaml``, unresolved;
            for W&B runs the logged ``config`` with ``overrides`` / ``sweep_name`` beside it).
        metrics: ``sad, mse, grad, conn``, routing statistics (``keep_ratio``,
            ``keep_ratio_argmax``, ``p_global_std``, ``enrichment_argmax``... and per block
            ``<stat>/block<i>``), ``peak_mib``, ``latency_s`` of ``split``.
        split: ``test``, ``val`` (final validation; no test metrics) or ``""`` (none).
        rules: the test split scored again under each inference rule (``metrics.json``'s
            ``test_rules``): ``argmax`` / ``expected`` → metrics. Empty for runs without it.
        splits: every split's metrics the run has (``test``, ``val``), e.g. for the teacher row.
        undefined: keys of ``split`` logged as NaN (an enrichment when nothing was kept):
            shown as — rather than left out.
        source: ``hydra``, ``wandb-offline`` or ``wandb``.
        path: the job folder (local runs).
        choices: config-group choices of the job (``.hydra/hydra.yaml``), e.g. ``router → none``.
        order: sort key inside its sweep (strings: folder, job number / creation time).
        evals: ``eval.py`` results next to the run, ``<data>_<split>[...]`` → payload.
        info: ``train_seconds``, ``global_step``, ``best_checkpoint``, ``url``...
        named: the sweep name came from the run (``sweep_name``, ``+sweep=``, W&B group), not
            from its folder.
    """

    name: str
    sweep: str
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    split: str = ""
    rules: dict[str, dict[str, float]] = field(default_factory=dict)
    splits: dict[str, dict[str, float]] = field(default_factory=dict)
    undefined: set[str] = field(default_factory=set)
    source: str = "hydra"
    path: Path | None = None
    choices: dict[str, str] = field(default_factory=dict)
    order: tuple[Any, ...] = ()
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    named: bool = False

    @property
    def finished(self) -> bool:
        """True when the run ended normally and has metrics to report."""
        return self.status == "finished" and bool(self.metrics)

    @property
    def seed(self) -> str | None:
        """The run's seed: its ``seed=`` override, else its config's; None when neither says."""
        return run_seed(self)


def parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """``["+sweep=x", "router=none", "~debug"]`` → ``{"sweep": "x", "router": "none", "debug": "(deleted)"}``."""
    out: dict[str, str] = {}
    for item in items or ():
        text = str(item).strip()
        if text.startswith("~"):
            out[text[1:].split("=", 1)[0]] = "(deleted)"
            continue
        key, sep, value = text.partition("=")
        if sep:
            out[key.lstrip("+")] = value
    return out


def _is_train_summary(summary: Any) -> bool:
    """``metrics.json`` of ``train.py`` (eval/predict runs write other payloads under that name)."""
    return isinstance(summary, dict) and ("val_final" in summary or "config" in summary)


def _is_train_config(config: Any) -> bool:
    return isinstance(config, dict) and (config.get("task_name") == "train" or "module" in config)


def _splits_from_summary(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``test`` and ``val`` (= ``val_final``) metrics of a ``metrics.json`` that have any of SAD/MSE/Grad/Conn."""
    out = {}
    for key, split in (("test", "test"), ("val_final", "val")):
        values = numbers(summary.get(key) or {})
        if any(m in values for m in METRICS):
            out[split] = values
    return out


def _rules_from(raw: Any) -> dict[str, dict[str, float]]:
    """``test_rules`` (``{"argmax": {...}, "expected": {...}}``) with the rules that have metrics."""
    if not isinstance(raw, Mapping):
        return {}
    out = {}
    for rule, values in raw.items():
        if isinstance(values, Mapping):
            metrics = numbers(values)
            if any(m in metrics for m in METRICS):
                out[str(rule)] = metrics
    return out


def metrics_from_flat(summary: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """Metrics from a W&B summary (``test/sad``, ``val/keep_ratio/block2``...): test, else val."""
    splits = splits_from_flat(summary)
    for split in ("test", "val"):
        if split in splits:
            return splits[split], split
    return {}, ""


def splits_from_flat(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for prefix, split in (("test/", "test"), ("val/", "val")):
        values = numbers({k[len(prefix):]: v for k, v in summary.items() if str(k).startswith(prefix)})
        if any(m in values for m in METRICS):
            out[split] = values
    return out


def _flat_undefined(summary: Mapping[str, Any], split: str) -> set[str]:
    prefix = f"{split}/"
    return {k[len(prefix):] for k in undefined_keys(summary) if split and k.startswith(prefix)}


def rules_from_flat(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per-rule test metrics of a W&B summary: a ``test_rules`` dict, or flat
    ``test_rules/<rule>/<metric>``, ``test_<rule>/<metric>`` or ``test/<rule>/<metric>`` keys."""
    rules = _rules_from(summary.get("test_rules"))
    if rules:
        return rules
    flat: dict[str, dict[str, Any]] = {}
    for key, value in summary.items():
        for rule in RULES:
            for prefix in (f"test_rules/{rule}/", f"test_{rule}/", f"test/{rule}/"):
                if str(key).startswith(prefix):
                    flat.setdefault(rule, {})[str(key)[len(prefix):]] = value
    return _rules_from(flat)


def _sweep_from(config: Mapping[str, Any], overrides: Mapping[str, str]) -> str | None:
    name = config.get("sweep_name") or overrides.get("sweep_name") or overrides.get("sweep")
    return str(name) if name else None


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the folder holding ``root`` (so the root's name shows), POSIX style."""
    try:
        return path.resolve().relative_to(root.resolve().parent).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _job_number(job_dir: Path, hydra_cfg: Mapping[str, Any]) -> int | None:
    num = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num")
    if isinstance(num, int):
        return num
    return int(job_dir.name) if job_dir.name.isdigit() else None


def _stop_reason(job_dir: Path) -> str:
    """Why a job folder has no ``metrics.json``, from its ``run_state.json`` when there is one."""
    state = read_json(job_dir / "run_state.json") or {}
    status = state.get("status")
    attempts = state.get("attempts") or [{}]
    last = attempts[-1] if isinstance(attempts[-1], dict) else {}
    if status == "resumed_elsewhere":
        return f"continued in {state.get('resumed_run')}"
    if status == "running":
        return "running or killed (no metrics.json yet; run_state says running)"
    if status:
        detail = f" at step {last['step']}" if last.get("step") is not None else ""
        error = f": {last['error']}" if last.get("error") else ""
        return f"{status}{detail}{error} (no metrics.json)"
    return "crashed: no metrics.json"


def _offline_wandb_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("wandb/offline-run-*") if p.is_dir())


def _wandb_config(raw: Any) -> dict[str, Any]:
    """W&B's ``config.yaml`` (``{key: {value: v, desc: ...}}``) → ``{key: v}``, ``_wandb`` dropped."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, entry in raw.items():
        if str(key).startswith("_wandb") or key == "wandb_version":
            continue
        out[str(key)] = entry.get("value") if isinstance(entry, dict) and "value" in entry else entry
    return out


def _unwrap_logged_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """W&B config as ``mematte.cli`` logs it (``config`` = resolved config, ``overrides``,
    ``sweep_name`` beside it) → the resolved config with those keys added; others unchanged."""
    inner = config.get("config")
    if isinstance(inner, Mapping) and ("model" in inner or "seed" in inner or "task_name" in inner):
        merged = dict(inner)
        for key, value in config.items():
            if key != "config" and value is not None:
                merged.setdefault(key, value)
        return merged
    return dict(config)


def read_job(job_dir: Path, root: Path) -> Run | None:
    """A Hydra job folder of ``train.py`` as a :class:`Run`; None for other tasks' folders."""
    summary = read_json(job_dir / "metrics.json") if (job_dir / "metrics.json").is_file() else None
    if summary is not None and not _is_train_summary(summary):
        return None  # an eval.py / predict.py run (or a training-free baseline)
    hydra_dir = job_dir / ".hydra"
    overrides = parse_overrides(read_yaml(hydra_dir / "overrides.yaml") or [])
    config = (summary or {}).get("config") or read_yaml(hydra_dir / "config.yaml") or {}
    if summary is None and not (_is_train_config(config) or (job_dir / "run_state.json").is_file()):
        return None  # eval / bench / predict folders (run_state.json is train.py's)
    hydra_cfg = read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = {str(k): str(v) for k, v in
               (((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}).items()}
    named = _sweep_from(config, overrides)
    run = Run(name=_relative(job_dir, root), sweep=named or _relative(job_dir.parent, root), status="finished",
              overrides=overrides, config=config, source="hydra", path=job_dir, choices=choices,
              named=named is not None)
    number = _job_number(job_dir, hydra_cfg)
    # zero-padded: job 10 sorts after job 9
    run.order = (_relative(job_dir.parent, root), f"{number if number is not None else -1:08d}", job_dir.name)
    if summary is not None:
        run.splits = _splits_from_summary(summary)
        for split in ("test", "val"):
            if split in run.splits:
                run.metrics, run.split = run.splits[split], split
                run.undefined = undefined_keys(summary.get("test" if split == "test" else "val_final") or {})
                break
        run.rules = _rules_from(summary.get("test_rules"))
        run.info = {k: summary.get(k) for k in ("train_seconds", "global_step", "best_checkpoint")
                    if summary.get(k) is not None}
        run.info["mtime"] = (job_dir / "metrics.json").stat().st_mtime
        if not run.metrics:
            run.status = "finished without metrics (metrics.json has no test / val_final)"
    else:
        run.status = (f"metrics.json unreadable ({job_dir / 'metrics.json'}): rerun the job or fix the file"
                      if (job_dir / "metrics.json").exists() else _stop_reason(job_dir))
        state = read_json(job_dir / "run_state.json") or {}
        if state.get("resumed_run"):
            run.info["resumed_run"] = str(state["resumed_run"])
        # what an interrupted run logged before it stopped, if W&B left a summary
        for wandb_dir in reversed(_offline_wandb_dirs(job_dir)):
            partial = read_json(wandb_dir / "files" / "wandb-summary.json")
            if isinstance(partial, dict):
                run.metrics, split = metrics_from_flat(partial)
                run.split = f"{split} (partial, W&B summary)" if split else ""
                break
    for eval_file in sorted((job_dir / "eval").glob("*.json")):
        payload = read_json(eval_file)
        if isinstance(payload, dict):
            run.evals[eval_file.stem] = payload
    return run


def read_offline_wandb(run_dir: Path, root: Path) -> Run:
    """An offline W&B run folder outside any job folder, from ``files/wandb-summary.json``."""
    files = run_dir / "files"
    summary = read_json(files / "wandb-summary.json")
    config = _unwrap_logged_config(_wandb_config(read_yaml(files / "config.yaml")))
    overrides = parse_overrides(config.get("overrides") or config.get("hydra_overrides") or [])
    named = _sweep_from(config, overrides)
    run = Run(name=_relative(run_dir, root), sweep=named or _relative(run_dir.parent.parent, root),
              status="finished", overrides=overrides, config=config, source="wandb-offline", path=run_dir,
              order=(_relative(run_dir, root),), named=named is not None)
    if isinstance(summary, dict):
        run.metrics, run.split = metrics_from_flat(summary)
        run.splits = splits_from_flat(summary)
        run.undefined = _flat_undefined(summary, run.split)
        run.rules = rules_from_flat(summary)
        if not run.metrics:
            run.status = "no test/val metrics in wandb-summary.json"
    else:
        run.status = (f"no files/wandb-summary.json (this W&B version keeps it in the .wandb file): "
                      f"`wandb sync {run_dir}` and use --wandb, or report the job folder's metrics.json")
    return run


def find_job_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (any depth, root included) holding ``metrics.json`` or ``.hydra/``."""
    found = {p.parent for p in root.rglob("metrics.json")}
    found |= {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    # W&B / checkpoint / eval / CSV-logger subfolders never hold a run of their own
    return sorted(d for d in found
                  if not {"wandb", "checkpoints", "eval", ".hydra", "csv"} & set(d.relative_to(root).parts)
                  or d == root)


def collect_local(roots: Sequence[str | Path]) -> list[Run]:
    """Every training run under ``roots`` (Hydra job folders, then stray offline W&B runs).

    Raises:
        ReportError: a root does not exist, or no run is found under any root.
    """
    runs: list[Run] = []
    for root in (Path(r) for r in roots):
        if not root.is_dir():
            raise ReportError(
                f"runs folder {root} does not exist: pass --runs with a folder of training runs "
                "(sweeps go to logs/train/multiruns/<sweep>_<time>/<job>/), or run a sweep first: "
                "python train.py -m +sweep=ablation_router"
            )
        job_dirs = find_job_dirs(root)
        jobs = [run for run in (read_job(d, root) for d in job_dirs) if run is not None]
        job_paths = [d.resolve() for d in job_dirs]
        for wandb_dir in sorted(root.rglob("offline-run-*")):
            if not wandb_dir.is_dir() or wandb_dir.parent.name != "wandb":
                continue
            resolved = wandb_dir.resolve()
            if any(resolved.is_relative_to(p) for p in job_paths):
                continue  # the job folder's metrics.json covers it
            jobs.append(read_offline_wandb(wandb_dir, root))
        log.info("%s: %d runs", root, len(jobs))
        runs += jobs
    if not runs:
        raise ReportError(
            f"no training runs under {', '.join(str(r) for r in roots)}: looked for train.py job "
            "folders (<job>/metrics.json, <job>/.hydra/overrides.yaml) and offline W&B runs "
            "(wandb/offline-run-*). Point --runs at a sweep folder, e.g. logs/train/multiruns"
        )
    return runs


# --------------------------------------------------------------------------- W&B API
def _summary_dict(summary: Any) -> dict[str, Any]:
    raw = getattr(summary, "_json_dict", None)
    if isinstance(raw, dict):
        return dict(raw)
    try:
        return dict(summary)
    except (TypeError, ValueError):
        return {}


def run_from_wandb(api_run: Any, project: str) -> Run:
    """A :class:`Run` from a ``wandb.apis.public.Run`` (summary metrics, config, group, state)."""
    config = _unwrap_logged_config({k: v for k, v in dict(api_run.config or {}).items() if not str(k).startswith("_")})
    overrides = parse_overrides(config.get("overrides") or config.get("hydra_overrides") or [])
    summary = _summary_dict(api_run.summary)
    metrics, split = metrics_from_flat(summary)
    state = str(getattr(api_run, "state", "finished") or "finished")
    status = "finished" if state == "finished" else f"{state} (W&B state)"
    if state == "finished" and not metrics:
        status = "finished without test/val metrics in the W&B summary"
    named = getattr(api_run, "group", None) or _sweep_from(config, overrides)
    name = str(getattr(api_run, "name", None) or getattr(api_run, "id", "run"))
    return Run(name=name, sweep=str(named or project), named=bool(named), status=status, overrides=overrides, config=config,
               metrics=metrics, split=split if status == "finished" else (f"{split} (partial)" if split else ""),
               rules=rules_from_flat(summary), splits=splits_from_flat(summary),
               undefined=_flat_undefined(summary, split),
               source="wandb", order=(str(getattr(api_run, "created_at", "") or ""), name),
               info={"url": getattr(api_run, "url", None), "id": getattr(api_run, "id", None)})


def collect_wandb(project: str, groups: Sequence[str] = (), api: Any = None, timeout: int = 30) -> list[Run] | None:
    """Runs of ``ENTITY/PROJECT`` (only ``groups`` if given) from the W&B API.

    Returns None (after a warning) when W&B is offline or the API does not answer, so that
    the caller falls back to local files; never raises for connectivity.
    """
    if api is None:
        mode = os.environ.get("WANDB_MODE", "").lower()
        if mode in ("offline", "disabled", "dryrun"):
            log.warning("WANDB_MODE=%s: not querying the W&B API; reading local files instead", mode)
            return None
        try:
            import wandb

            api = wandb.Api(timeout=timeout)
        except Exception as err:  # no key, no network, wandb missing: all mean "use local files"
            log.warning("W&B API unavailable (%s); reading local files. `wandb login` enables it", err)
            return None
    filters = {"group": {"$in": list(groups)}} if groups else None
    try:
        api_runs = list(api.runs(project, filters=filters))
    except Exception as err:
        log.warning("W&B API query of %s failed (%s); reading local files", project, err)
        return None
    return [run_from_wandb(r, project) for r in api_runs]


def default_roots() -> list[Path]:
    """The default run folders that exist (ReportError naming them when none does)."""
    roots = [Path(r) for r in DEFAULT_RUNS if Path(r).is_dir()]
    if not roots:
        raise ReportError(
            f"no sweep results: none of {', '.join(DEFAULT_RUNS)} exists (relative to {Path.cwd()}). "
            "Run a sweep first (python train.py -m +sweep=ablation_router), or pass --runs DIR"
        )
    return roots


def collect_runs(
    roots: Sequence[str | Path] | None = None,
    wandb_project: str | None = None,
    groups: Sequence[str] = (),
    api: Any = None,
    named_only: bool | None = None,
) -> list[Run]:
    """Runs from the W&B API when asked for and reachable, else from local files.

    Args:
        roots: local folders to search; None = :data:`DEFAULT_RUNS` that exist.
        wandb_project: ``ENTITY/PROJECT`` to query first.
        groups: only these sweeps (W&B groups; also filters local runs).
        api: a ``wandb.Api``-like object (tests); None = a real one.
        named_only: keep only runs of named sweeps (``sweep_name``); default: True for the
            default roots (plain multiruns there are not ablations), False for given ones.
    """
    if named_only is None:
        named_only = roots is None
    runs: list[Run] | None = None
    if wandb_project:
        runs = collect_wandb(wandb_project, groups, api=api)
        if runs is not None and not runs:
            log.warning("W&B %s has no runs%s; reading local files", wandb_project,
                        f" in group(s) {', '.join(groups)}" if groups else "")
            runs = None
    if runs is None:
        runs = collect_local(default_roots() if roots is None else roots)
    if named_only:
        named = [r for r in runs if r.named]
        if not named:
            raise ReportError(
                f"{len(runs)} runs found but none of a named sweep (no sweep_name: not launched with "
                "+sweep=...). Launch one (python train.py -m +sweep=ablation_router) or pass --runs DIR "
                "to report plain runs"
            )
        if len(named) < len(runs):
            log.info("%d runs outside named sweeps left out (pass --runs to include them)", len(runs) - len(named))
        runs = named
    if groups:
        kept = [r for r in runs if r.sweep in groups]
        if not kept:
            found = sorted({r.sweep for r in runs})
            raise ReportError(f"no runs of sweep(s) {', '.join(groups)}; found sweeps: {', '.join(found)}")
        runs = kept
    return runs


# =========================================================================== grouping
def group_sweeps(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by sweep name (the paper's ablations first, in its order), runs in launch order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.sweep, []).append(run)

    def rank(name: str) -> tuple[int, str]:
        return (SWEEP_ORDER.index(name) if name in SWEEP_ORDER else len(SWEEP_ORDER), name)

    return {name: sorted(groups[name], key=lambda r: r.order) for name in sorted(groups, key=rank)}


def ignored(key: str) -> bool:
    """Override keys that are not part of a setting (logging, paths, the sweep's name, the seed)."""
    return key == SEED_KEY or key.startswith(IGNORED_KEY_PREFIXES)


def _plain(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def run_seed(run: Run) -> str | None:
    """The seed a run trained with: its ``seed=`` override, else its config's ``seed``."""
    if SEED_KEY in run.overrides:
        return run.overrides[SEED_KEY]
    return _plain(run.config.get(SEED_KEY)) if isinstance(run.config, Mapping) else None


def setting_signature(run: Run) -> tuple[tuple[str, str], ...]:
    """What a run set, seed left out: runs with equal signatures are seeds of one setting."""
    return tuple(sorted((k, v) for k, v in run.overrides.items() if not ignored(k)))


def dedupe(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """One run per setting and seed: a finished one (the latest) over unfinished reruns of it.

    A sweep launched twice (e.g. after a crash) has several jobs with the same overrides and
    seed; a job that only handed over to an earlier run (``continued in ...``) is dropped when
    that run is present. Runs of one setting with different seeds are all kept. Returns the
    kept runs and a note per dropped one.
    """
    present = {r.path.resolve() for r in runs if r.path is not None}
    notes: list[str] = []
    candidates = []
    for run in runs:
        target = run.info.get("resumed_run")
        if target and Path(target).resolve() in present:
            notes.append(f"{run.name}: continued in {target} (listed there)")
            continue
        candidates.append(run)
    by_setting: dict[tuple, list[Run]] = {}
    for run in candidates:
        key = (setting_signature(run), run_seed(run)) if run.overrides else ("__name__", run.name)
        by_setting.setdefault(key, []).append(run)
    kept_ids = set()
    for same in by_setting.values():
        finished = [r for r in same if r.finished]
        best = max(finished, key=lambda r: r.info.get("mtime", 0.0)) if finished else same[-1]
        kept_ids.add(id(best))
        for other in same:
            if other is not best:
                seed = f", seed {run_seed(best)}" if run_seed(best) is not None else ""
                notes.append(f"{other.name} ({other.status}): superseded by {best.name}, same settings{seed}")
    return [r for r in candidates if id(r) in kept_ids], notes


def varied_keys(runs: Sequence[Run], max_config_keys: int = 4) -> list[str]:
    """The settings that differ across a sweep's runs (the seed never counts).

    From the overrides (keys whose value, or presence, differs); runs without overrides (W&B
    runs of a config that logs none) fall back to the differing leaves of their configs,
    shortest names first, at most ``max_config_keys``.
    """
    if any(r.overrides for r in runs):
        keys = list(dict.fromkeys(k for r in runs for k in r.overrides if not ignored(k)))
        return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    flats = [flatten(r.config) for r in runs]
    if len({f.get("sweep_value") for f in flats}) > 1:  # the sweep's own label of each job
        return ["sweep_value"]
    keys = list(dict.fromkeys(k for f in flats for k in f if not ignored(k)))
    varied = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    return sorted(varied, key=lambda k: (k.count("."), len(k)))[:max_config_keys]


def setting_value(run: Run, key: str) -> str:
    """A run's value of a varied setting: its override, else its group choice / config value."""
    if key in run.overrides:
        return run.overrides[key]
    if key in run.choices:
        return f"{run.choices[key]} (default)"
    value = config_lookup(run.config, key)
    if value is None:
        return "—"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return f"{text} (default)" if run.source == "hydra" else text


def option_value(run: Run, key: str) -> str | None:
    """A run's value of option ``key`` (override, group choice, scalar config value), no decoration."""
    if key in run.overrides:
        return run.overrides[key]
    if key in run.choices:
        return run.choices[key]
    value = config_lookup(run.config, key)
    return _plain(value) if value is not None and not isinstance(value, (Mapping, list)) else None


def same_value(a: Any, b: Any) -> bool:
    """Option values equal as text or as numbers (``1.0`` = ``1``, ``0.10`` = ``0.1``)."""
    if a is None or b is None:
        return False
    if str(a) == str(b):
        return True
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def block_numbers(keys: Iterable[str]) -> list[int]:
    """Block indices of ``<stat>/block<i>`` keys, ascending."""
    return sorted({int(m.group("block")) for m in map(BLOCK_KEY.match, keys) if m})


def is_routed(run: Run) -> bool | None:
    """Whether the run's net routes tokens (None when its config does not say)."""
    if "keep_ratio" in run.metrics:
        return True
    backbone = config_lookup(run.config, "model.backbone")
    if isinstance(backbone, Mapping) and "global_block" in backbone:
        return backbone["global_block"] is not None
    if "router" in run.choices:
        return run.choices["router"] not in ("none", "null")
    if "router" in run.overrides:
        return run.overrides["router"] not in ("none", "null")
    return None


def kept_ratio(run: Run) -> float | None:
    """Mean kept (global-attention) token share; 1.0 for a net without routing."""
    if "keep_ratio" in run.metrics:
        return run.metrics["keep_ratio"]
    return 1.0 if is_routed(run) is False else None


def decision_rule(run: Run) -> str | None:
    """How the run's routed blocks decided at test time, in words (None when unknown).

    From ``model.backbone.global_block``: ``selection: topk`` = a fixed top-K share per image
    (``routing=fixed``), else the ``inference`` rule of learned routers.
    """
    if is_routed(run) is False:
        return "no routing (every token in global attention)"
    block = config_lookup(run.config, "model.backbone.global_block")
    if not isinstance(block, Mapping):
        return None
    if block.get("selection") == "topk":
        keep = block.get("keep_ratio")
        text = f"fixed top-K ({keep:g} of each image's tokens)" if isinstance(keep, (int, float)) else "fixed top-K"
    else:
        rule = block.get("inference") or "argmax"
        text = {"argmax": "argmax (p(global) ≥ 0.5)",
                "expected": "expected (each image's top round(Σp) tokens)"}.get(str(rule), str(rule))
    if block.get("max_tokens"):
        text += f", at most {block['max_tokens']} tokens"
    return text


# data options whose validation and test splits are another option's (conf/data/synthetic_augment
# changes only the training pipeline): matched to that option's baselines
EVAL_DATA_ALIASES = {"synthetic_augment": "synthetic"}


def data_name(run: Run) -> str | None:
    """The dataset the run was scored on, as ``eval.py`` names it (``synthetic``,
    ``composition1k``...; options that share another's eval splits map to it); None when unknown."""
    for source in (run.choices, run.overrides):
        if source.get("data"):
            return EVAL_DATA_ALIASES.get(str(source["data"]), str(source["data"]))
    name = run.config.get("data_name") if isinstance(run.config, Mapping) else None
    if name:
        return str(name)
    target = str(config_lookup(run.config, "data.test_set._target_") or config_lookup(run.config, "data.val_set._target_")
                 or "")
    return "synthetic" if "Synthetic" in target else None


def eval_size(run: Run, split: str) -> int | None:
    """How many images the run's ``split`` has when the config says (synthetic sets do)."""
    value = config_lookup(run.config, f"data.{split}_set.num_samples")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
