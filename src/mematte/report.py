"""Ablation tables, plots and ``experiments/RESULTS.md`` from sweep results.

``python -m mematte.report [--runs DIR ...] [--wandb ENTITY/PROJECT --group G] [--bench CSV ...]
[--out experiments]``

Where runs come from (the first source that yields runs is used):

1. The W&B API (``--wandb ENTITY/PROJECT``, optionally ``--group`` = sweep name), only when
   W&B is online (``WANDB_MODE`` not ``offline``/``disabled``) and ``wandb.Api()`` answers.
2. Local files under ``--runs``, found by globbing at any depth. Default: the named sweeps
   (``sweep_name`` set by ``+sweep=...``) under ``logs/train/multiruns`` (where conf/sweep puts
   them: ``<sweep_name>_<date>_<time>/<job>/``) and ``logs/sweeps``; with ``--runs``, every run:

   * Hydra job folders: ``metrics.json`` written by :func:`mematte.cli.train` (resolved
     ``config``, ``val_final``, ``test``, ...), ``.hydra/overrides.yaml`` (what the job set),
     ``.hydra/hydra.yaml`` (config group choices), ``run_state.json`` (why a job stopped) and
     ``eval/*.json`` (``eval.py`` results). A job folder without ``metrics.json`` did not
     finish (crash, kill, still running): it is listed with its status, never dropped.
   * Offline W&B runs (``wandb/offline-run-*``) that belong to no job folder, read from
     ``files/wandb-summary.json`` and ``files/config.yaml`` when present (the ``.wandb``
     binary is not parsed).

Runs are grouped into ablations by ``sweep_name`` in their config (set by ``+sweep=...``),
else by the multirun folder. Each ablation gets a table (the settings that differ across its
jobs, SAD / MSE / Grad / Conn of the test split or the final validation, kept ratios, each
run's own test-time peak memory and latency per image (``test/peak_mib``, ``test/latency_s``
from :class:`mematte.callbacks.InferenceProfiler`), and the benchmark's peak memory and latency
at a common high resolution joined from benchmark CSVs by architecture) as
``<out>/report/<sweep>.md`` and ``.csv``, and a plot of SAD against the kept ratio. The
benchmark CSVs give a memory-vs-resolution plot. ``<out>/RESULTS.md`` receives everything
between the markers ``<!-- report:begin -->`` and ``<!-- report:end -->``; text outside them
is hand-written and kept byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mematte.atomic import atomic_path, atomic_write_text

log = logging.getLogger("mematte.report")

METRICS = ("sad", "mse", "grad", "conn")
METRIC_LABELS = {"sad": "SAD", "mse": "MSE", "grad": "Grad", "conn": "Conn"}
BEGIN_MARKER = "<!-- report:begin -->"
END_MARKER = "<!-- report:end -->"
# where conf/sweep/_base.yaml puts sweeps (logs/<task>/multiruns/<sweep>_<time>/<job>/), and
# logs/sweeps for sweeps launched with hydra.sweep.dir there
DEFAULT_RUNS = ("logs/train/multiruns", "logs/sweeps")
# Override keys that never describe the ablated setting (where files go, logging, launcher).
IGNORED_KEY_PREFIXES = ("hydra.", "paths.", "logger", "extras.", "tags", "task_name", "sweep", "resume",
                        "ckpt_path", "callbacks", "debug")
# The paper's ablations in its order (conf/sweep/*); other sweeps follow alphabetically.
SWEEP_ORDER = ("ablation_router", "ablation_ltrm", "ablation_keep_ratio", "ablation_objective",
               "ablation_distill", "ablation_no_ltrm")
_BLOCK_KEY = re.compile(r"^keep_ratio/block(\d+)$")
GIB = 1024**3
MIB = 1024**2


class ReportError(RuntimeError):
    """A problem with the report's inputs; the message names the path and the fix."""


# =========================================================================== runs
@dataclass
class Run:
    """One training run, however it was found.

    Attributes:
        name: job folder relative to its ``--runs`` root, or the W&B run name.
        sweep: the ablation it belongs to (``sweep_name``, else its multirun folder).
        status: ``finished``, or why it has no final metrics (``failed: ...``, ``crashed: ...``).
        overrides: Hydra command-line overrides, ``key → value`` (``+``/``++`` stripped).
        config: resolved config (from ``metrics.json``; else ``.hydra/config.yaml``, unresolved).
        metrics: ``sad, mse, grad, conn, keep_ratio, keep_ratio/block<i>`` of ``split``.
        split: ``test``, ``val`` (final validation; no test metrics) or ``""`` (none).
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


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is missing or unreadable (a crash mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _is_train_summary(summary: Any) -> bool:
    """``metrics.json`` of ``train.py`` (eval/predict runs write other payloads under that name)."""
    return isinstance(summary, dict) and ("val_final" in summary or "config" in summary)


def _is_train_config(config: Any) -> bool:
    return isinstance(config, dict) and (config.get("task_name") == "train" or "module" in config)


def _metrics_from_summary(summary: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """Test metrics of a ``metrics.json``; the final validation when the run had no test."""
    for key, split in (("test", "test"), ("val_final", "val")):
        values = _numbers(summary.get(key) or {})
        if any(m in values for m in METRICS):
            return values, split
    return {}, ""


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def metrics_from_flat(summary: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """Metrics from a W&B summary (``test/sad``, ``val/keep_ratio/block2``...): test, else val."""
    for prefix, split in (("test/", "test"), ("val/", "val")):
        values = _numbers({k[len(prefix):]: v for k, v in summary.items() if str(k).startswith(prefix)})
        if any(m in values for m in METRICS):
            return values, split
    return {}, ""


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
    state = _read_json(job_dir / "run_state.json") or {}
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


def read_job(job_dir: Path, root: Path) -> Run | None:
    """A Hydra job folder of ``train.py`` as a :class:`Run`; None for other tasks' folders."""
    summary = _read_json(job_dir / "metrics.json") if (job_dir / "metrics.json").is_file() else None
    if summary is not None and not _is_train_summary(summary):
        return None  # an eval.py / predict.py run
    hydra_dir = job_dir / ".hydra"
    overrides = parse_overrides(_read_yaml(hydra_dir / "overrides.yaml") or [])
    config = (summary or {}).get("config") or _read_yaml(hydra_dir / "config.yaml") or {}
    if summary is None and not (_is_train_config(config) or (job_dir / "run_state.json").is_file()):
        return None  # eval / bench / predict folders (run_state.json is train.py's)
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
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
        run.metrics, run.split = _metrics_from_summary(summary)
        run.info = {k: summary.get(k) for k in ("train_seconds", "global_step", "best_checkpoint")
                    if summary.get(k) is not None}
        run.info["mtime"] = (job_dir / "metrics.json").stat().st_mtime
        if not run.metrics:
            run.status = "finished without metrics (metrics.json has no test / val_final)"
    else:
        run.status = (f"metrics.json unreadable ({job_dir / 'metrics.json'}): rerun the job or fix the file"
                      if (job_dir / "metrics.json").exists() else _stop_reason(job_dir))
        state = _read_json(job_dir / "run_state.json") or {}
        if state.get("resumed_run"):
            run.info["resumed_run"] = str(state["resumed_run"])
        # what an interrupted run logged before it stopped, if W&B left a summary
        for wandb_dir in reversed(_offline_wandb_dirs(job_dir)):
            partial = _read_json(wandb_dir / "files" / "wandb-summary.json")
            if isinstance(partial, dict):
                run.metrics, split = metrics_from_flat(partial)
                run.split = f"{split} (partial, W&B summary)" if split else ""
                break
    for eval_file in sorted((job_dir / "eval").glob("*.json")):
        payload = _read_json(eval_file)
        if isinstance(payload, dict):
            run.evals[eval_file.stem] = payload
    return run


def read_offline_wandb(run_dir: Path, root: Path) -> Run:
    """An offline W&B run folder outside any job folder, from ``files/wandb-summary.json``."""
    files = run_dir / "files"
    summary = _read_json(files / "wandb-summary.json")
    config = _wandb_config(_read_yaml(files / "config.yaml"))
    overrides = parse_overrides(config.get("overrides") or config.get("hydra_overrides") or [])
    named = _sweep_from(config, overrides)
    run = Run(name=_relative(run_dir, root), sweep=named or _relative(run_dir.parent.parent, root),
              status="finished", overrides=overrides, config=config, source="wandb-offline", path=run_dir,
              order=(_relative(run_dir, root),), named=named is not None)
    if isinstance(summary, dict):
        run.metrics, run.split = metrics_from_flat(summary)
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
    # W&B / checkpoint / eval subfolders never hold a run of their own
    return sorted(d for d in found if not {"wandb", "checkpoints", "eval", ".hydra"} & set(d.relative_to(root).parts)
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
    config = {k: v for k, v in dict(api_run.config or {}).items() if not str(k).startswith("_")}
    overrides = parse_overrides(config.get("overrides") or config.get("hydra_overrides") or [])
    metrics, split = metrics_from_flat(_summary_dict(api_run.summary))
    state = str(getattr(api_run, "state", "finished") or "finished")
    status = "finished" if state == "finished" else f"{state} (W&B state)"
    if state == "finished" and not metrics:
        status = "finished without test/val metrics in the W&B summary"
    named = getattr(api_run, "group", None) or _sweep_from(config, overrides)
    name = str(getattr(api_run, "name", None) or getattr(api_run, "id", "run"))
    return Run(name=name, sweep=str(named or project), named=bool(named), status=status, overrides=overrides, config=config,
               metrics=metrics, split=split if status == "finished" else (f"{split} (partial)" if split else ""),
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


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_KEY_PREFIXES)


def _setting_signature(run: Run) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in run.overrides.items() if not _ignored(k)))


def dedupe(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """One run per setting: a finished one (the latest) over unfinished reruns of it.

    A sweep launched twice (e.g. after a crash) has several jobs with the same overrides;
    a job that only handed over to an earlier run (``continued in ...``) is dropped when that
    run is present. Returns the kept runs and a note per dropped one.
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
        key = _setting_signature(run) if run.overrides else ("__name__", run.name)
        by_setting.setdefault(key, []).append(run)
    kept_ids = set()
    for same in by_setting.values():
        finished = [r for r in same if r.finished]
        best = max(finished, key=lambda r: r.info.get("mtime", 0.0)) if finished else same[-1]
        kept_ids.add(id(best))
        for other in same:
            if other is not best:
                notes.append(f"{other.name} ({other.status}): superseded by {best.name}, same settings")
    return [r for r in candidates if id(r) in kept_ids], notes


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _config_lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def varied_keys(runs: Sequence[Run], max_config_keys: int = 4) -> list[str]:
    """The settings that differ across a sweep's runs.

    From the overrides (keys whose value, or presence, differs); runs without overrides (W&B
    runs of a config that logs none) fall back to the differing leaves of their configs,
    shortest names first, at most ``max_config_keys``.
    """
    if any(r.overrides for r in runs):
        keys = list(dict.fromkeys(k for r in runs for k in r.overrides if not _ignored(k)))
        return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    flats = [_flatten(r.config) for r in runs]
    if len({f.get("sweep_value") for f in flats}) > 1:  # the sweep's own label of each job
        return ["sweep_value"]
    keys = list(dict.fromkeys(k for f in flats for k in f if not _ignored(k)))
    varied = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    return sorted(varied, key=lambda k: (k.count("."), len(k)))[:max_config_keys]


def setting_value(run: Run, key: str) -> str:
    """A run's value of a varied setting: its override, else its group choice / config value."""
    if key in run.overrides:
        return run.overrides[key]
    if key in run.choices:
        return f"{run.choices[key]} (default)"
    value = _config_lookup(run.config, key)
    if value is None:
        return "—"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return f"{text} (default)" if run.source == "hydra" else text


def block_keys(runs: Sequence[Run]) -> list[str]:
    """``keep_ratio/block<i>`` keys present in any run, by block number."""
    keys = {k for r in runs for k in r.metrics if _BLOCK_KEY.match(k)}
    return sorted(keys, key=lambda k: int(_BLOCK_KEY.match(k).group(1)))


def is_routed(run: Run) -> bool | None:
    """Whether the run's net routes tokens (None when its config does not say)."""
    if "keep_ratio" in run.metrics:
        return True
    backbone = _config_lookup(run.config, "model.backbone")
    if isinstance(backbone, Mapping) and "global_block" in backbone:
        return backbone["global_block"] is not None
    if "router" in run.choices:
        return run.choices["router"] not in ("none", "null")
    return None


def kept_ratio(run: Run) -> float | None:
    """Mean kept (global-attention) token share; 1.0 for a net without routing."""
    if "keep_ratio" in run.metrics:
        return run.metrics["keep_ratio"]
    return 1.0 if is_routed(run) is False else None


# =========================================================================== benchmark
@dataclass
class BenchPoint:
    """One row of a ``bench.py`` CSV (``mematte.bench.write_csv``)."""

    model: str
    height: int
    width: int
    status: str
    peak_bytes: int | None
    estimate_bytes: int | None
    latency_s: float | None
    device: str
    reason: str
    source: str

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def resolution(self) -> str:
        return f"{self.width}×{self.height}"


def _opt_int(text: str | None) -> int | None:
    return int(float(text)) if text not in (None, "", "None") else None


def _opt_float(text: str | None) -> float | None:
    return float(text) if text not in (None, "", "None") else None


def read_bench_csv(path: str | Path) -> list[BenchPoint]:
    """Rows of a benchmark CSV; ReportError naming the file when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"benchmark CSV {path} does not exist: run `python bench.py` (writes "
                          "experiments/results/bench_<device>.csv) or drop --bench")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"model", "height", "width", "status", "peak_bytes", "latency_s"} - set(reader.fieldnames or [])
        if missing:
            raise ReportError(f"{path} is not a bench.py CSV (missing columns {sorted(missing)})")
        return [
            BenchPoint(model=row["model"], height=int(row["height"]), width=int(row["width"]),
                       status=row["status"], peak_bytes=_opt_int(row.get("peak_bytes")),
                       estimate_bytes=_opt_int(row.get("estimate_bytes")),
                       latency_s=_opt_float(row.get("latency_s")), device=row.get("device") or "",
                       reason=row.get("reason") or "", source=path.name)
            for row in reader
        ]


def _conf_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "conf"


def bench_signatures(conf_dir: Path | None = None) -> dict[str, tuple[int, bool, bool]]:
    """Bench model key → (embed dim, routed, naive attention), from ``conf/bench.yaml``.

    Each bench model is a list of ``train.py`` overrides; the backbone option's embed dim is
    read from ``conf/backbone/<option>.yaml``. Falls back to the key's name
    (``mematte_s``, ``vitmatte_b_naive``) when the config folder is not there.
    """
    conf_dir = conf_dir or _conf_dir()
    widths = {"t": 192, "s": 384, "b": 768}
    signatures: dict[str, tuple[int, bool, bool]] = {}
    models = ((_read_yaml(conf_dir / "bench.yaml") or {}).get("models") or {})
    for key, spec in models.items():
        overrides = parse_overrides((spec or {}).get("overrides") or [])
        backbone = _read_yaml(conf_dir / "backbone" / f"{overrides.get('backbone', 'vit_tiny')}.yaml") or {}
        dim = (backbone.get("backbone") or {}).get("embed_dim")
        if dim is None:
            continue
        routed = overrides.get("router", "none") not in ("none", "null")
        naive = overrides.get("backbone.attn_impl") == "naive"
        signatures[str(key)] = (int(dim), routed, naive)
    for key in ("vitmatte_s", "vitmatte_b", "mematte_s", "mematte_b", "vitmatte_s_naive", "vitmatte_b_naive"):
        if key not in signatures:
            parts = key.split("_")
            signatures[key] = (widths[parts[1]], parts[0] == "mematte", key.endswith("_naive"))
    return signatures


def bench_labels(conf_dir: Path | None = None) -> dict[str, str]:
    """Bench model key → its label in ``conf/bench.yaml`` (``mematte_s`` → ``MEMatte-S``)."""
    models = ((_read_yaml((conf_dir or _conf_dir()) / "bench.yaml") or {}).get("models") or {})
    return {str(k): str((v or {}).get("label", k)) for k, v in models.items()}


def run_signature(run: Run) -> tuple[int, bool, bool] | None:
    """(embed dim, routed, naive attention) of a run's net, for joining benchmark rows."""
    backbone = _config_lookup(run.config, "model.backbone")
    if not isinstance(backbone, Mapping) or backbone.get("embed_dim") is None:
        return None
    return (int(backbone["embed_dim"]), backbone.get("global_block") is not None,
            backbone.get("attn_impl") == "naive")


@dataclass
class BenchJoin:
    """How a table's runs map to benchmark points."""

    models: dict[int, str]  # id(run) → bench model key
    points: dict[tuple[str, int, int], BenchPoint]  # (model, h, w) → point (first CSV wins)
    resolution: tuple[int, int] | None  # the table's common (h, w), None = per row

    def point(self, run: Run) -> BenchPoint | None:
        """The run's point at the table resolution, else its largest measured one."""
        model = self.models.get(id(run))
        if model is None:
            return None
        if self.resolution is not None:
            return self.points.get((model, *self.resolution))
        ok = [p for (m, _, _), p in self.points.items() if m == model and p.status == "ok"]
        return max(ok, key=lambda p: p.pixels) if ok else None


def join_bench(runs: Sequence[Run], points: Sequence[BenchPoint], resolution: tuple[int, int] | None = None,
               signatures: Mapping[str, tuple[int, bool, bool]] | None = None) -> BenchJoin:
    """Match runs to benchmark models by architecture and pick the table's resolution.

    The resolution is ``resolution`` if given, else the largest one at which every matched
    model was measured (status ok); None (per-row largest) when there is no common one.
    """
    signatures = signatures if signatures is not None else bench_signatures()
    by_signature: dict[tuple[int, bool, bool], str] = {}
    benched = dict.fromkeys(p.model for p in points)
    for key in benched:  # first bench model of a signature wins (CSV order)
        sig = signatures.get(key)
        if sig is not None:
            by_signature.setdefault(sig, key)
    table: dict[tuple[str, int, int], BenchPoint] = {}
    for p in points:
        table.setdefault((p.model, p.height, p.width), p)
    models = {}
    for run in runs:
        sig = run_signature(run)
        if sig is not None and sig in by_signature:
            models[id(run)] = by_signature[sig]
    if resolution is None and models:
        used = set(models.values())
        sizes = [(h, w) for (m, h, w), p in table.items() if p.status == "ok"]
        common = [s for s in dict.fromkeys(sizes)
                  if all(table.get((m, *s)) is not None and table[(m, *s)].status == "ok" for m in used)]
        resolution = max(common, key=lambda s: s[0] * s[1]) if common else None
    return BenchJoin(models=models, points=table, resolution=resolution)


# =========================================================================== tables
@dataclass
class Table:
    """One ablation: a row per run with raw values (CSV) and display strings (markdown).

    ``columns`` are ``(key, label)`` pairs; ``rows`` hold raw values by key.
    """

    sweep: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    notes: list[str]
    runs: list[Run]
    setting_keys: list[str]


def _fmt(value: Any) -> str:
    """Numbers with 4 significant digits, no exponent; None as an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
        return f"{value:.{digits}f}"
    return str(value)


def _setting_cell(run: Run, column: str) -> str:
    """A setting column's value: a varied key's value, the run name, or all of its overrides."""
    key = column.split(":", 1)[1]
    if key == "run":
        return run.name
    if key == "overrides":
        shown = [f"{k}={v}" for k, v in run.overrides.items() if not _ignored(k)]
        return " ".join(shown) or run.name
    return setting_value(run, key)


def _label(run: Run, keys: Sequence[str]) -> str:
    return ", ".join(setting_value(run, k) for k in keys) if keys else run.name


def build_table(sweep: str, runs: Sequence[Run], bench: Sequence[BenchPoint] = (),
                bench_resolution: tuple[int, int] | None = None) -> Table:
    """The ablation table of one sweep (see the module docstring for the columns)."""
    runs, notes = dedupe(runs)
    keys = varied_keys(runs)
    if keys:
        setting_cols = [(f"setting:{k}", k) for k in keys]
    elif len(runs) == 1:  # a one-job sweep: show what it set
        setting_cols = [("setting:overrides", "setting")]
    else:
        setting_cols = [("setting:run", "run")]
    blocks = block_keys(runs)
    join = join_bench(runs, bench, bench_resolution) if bench else None
    res = f" @ {join.resolution[1]}×{join.resolution[0]}" if join and join.resolution else ""
    columns = setting_cols + [(m, METRIC_LABELS[m]) for m in METRICS] + [("keep_ratio", "kept")]
    columns += [(b, f"kept b{_BLOCK_KEY.match(b).group(1)}") for b in blocks]
    # cost measured in each run's own test loop (mematte.callbacks.InferenceProfiler)
    own_cost = [c for c in ("peak_mib", "latency_s") if any(run.metrics.get(c) is not None for run in runs)]
    columns += [(c, {"peak_mib": "peak MiB", "latency_s": "latency s"}[c]) for c in own_cost]
    if join and join.models:
        columns += [("bench_peak_mib", f"bench peak MiB{res}"), ("bench_latency_s", f"bench latency s{res}")]
    elif not own_cost:
        columns += [("bench_peak_mib", "peak MiB"), ("bench_latency_s", "latency s")]
    columns += [("split", "metrics of"), ("status", "status"), ("run", "run")]
    rows = []
    for run in runs:
        row: dict[str, Any] = {key: _setting_cell(run, key) for key, _ in setting_cols}
        for m in METRICS:
            row[m] = run.metrics.get(m)
        row["keep_ratio"] = kept_ratio(run)
        row["routed"] = is_routed(run)
        for b in blocks:
            row[b] = run.metrics.get(b)
        point = join.point(run) if join else None
        row["bench_model"] = join.models.get(id(run)) if join else None
        row["bench_resolution"] = point.resolution if point else None
        ok = point is not None and point.status == "ok"
        row["peak_mib"], row["latency_s"] = run.metrics.get("peak_mib"), run.metrics.get("latency_s")
        row["bench_peak_mib"] = point.peak_bytes / MIB if ok and point.peak_bytes is not None else None
        row["bench_latency_s"] = point.latency_s if ok else None
        if point is not None and not ok:
            row["bench_status"] = f"{point.status}: {point.reason}"
        row["split"] = run.split
        row["status"] = "ok" if run.finished else run.status
        row["run"] = run.name
        row["source"] = run.source
        rows.append(row)
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        notes.insert(0, f"{len(unfinished)} of {len(runs)} runs did not finish (status column); their "
                        "metrics are missing or partial")
    if any(r["split"] == "val" for r in rows):
        notes.append("`metrics of: val` = final validation (the run has no test metrics)")
    if own_cost:
        notes.append("peak MiB / latency s: each run's own test loop, per image (largest forward-pass peak "
                     "above the input and weights; median forward time), on the run's device and test images")
    if join:
        used = sorted(set(join.models.values()))
        if used:
            where = "at the largest resolution measured" if join.resolution is None else f"at {res[3:]}"
            sources = sorted({p.source for p in bench})
            notes.append(f"peak memory / latency: benchmark model(s) {', '.join(used)} from "
                         f"{', '.join(sources)} {where}, matched by architecture (random weights, fixed "
                         "top-K routing: one value per architecture, not per trained run)")
        else:
            notes.append("bench peak memory / latency: no benchmark model has these runs' architecture "
                         "(bench.py models are ViT-S/B; these runs differ)" + ("" if own_cost else " — shown as —"))
    return Table(sweep=sweep, columns=columns, rows=rows, notes=notes, runs=list(runs), setting_keys=keys)


def _cell(table: Table, row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "keep_ratio" and row.get("routed") is False:
        return "1 (no routing)"
    if key in ("bench_peak_mib", "bench_latency_s") and value is None and row.get("bench_status"):
        return row["bench_status"].split(":", 1)[0]
    if key in ("peak_mib", "bench_peak_mib") and value is not None:
        text = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
    else:
        text = _fmt(value)
    if key.startswith("bench_") and value is not None:
        if "@" not in dict(table.columns)[key] and row.get("bench_resolution"):
            text += f" ({row['bench_resolution']})"  # no common resolution: say which
    return text


def table_markdown(table: Table) -> str:
    """The table as GitHub markdown, followed by its notes."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    numeric = set(METRICS) | {"keep_ratio", "peak_mib", "latency_s", "bench_peak_mib", "bench_latency_s"}
    numeric |= {k for k, _ in table.columns if k.startswith("keep_ratio/")}
    lines = ["| " + " | ".join(esc(label) for _, label in table.columns) + " |",
             "|" + "|".join("---:" if k in numeric else "---" for k, _ in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(esc(_cell(table, row, k)) for k, _ in table.columns) + " |")
    text = "\n".join(lines) + "\n"
    if table.notes:
        text += "\n" + "\n".join(f"- {esc(n)}" for n in table.notes) + "\n"
    evals = eval_markdown(table)
    if evals:
        text += "\n" + evals
    return text


def eval_markdown(table: Table) -> str:
    """Full-resolution ``eval.py`` results stored next to the runs (``<run>/eval/*.json``)."""
    lines = []
    for run in table.runs:
        for name, payload in run.evals.items():
            metrics = payload.get("metrics") or {}
            per_image = (payload.get("seconds") / payload["num_images"]
                         if payload.get("seconds") and payload.get("num_images") else None)
            lines.append(f"| {_label(run, table.setting_keys)} | {name} | "
                         + " | ".join(_fmt(_numbers(metrics).get(m)) for m in METRICS)
                         + f" | {_fmt(_numbers(metrics).get('keep_ratio'))} | {_fmt(per_image)} |")
    if not lines:
        return ""
    head = ["eval.py results (full resolution):", "",
            "| run | eval | SAD | MSE | Grad | Conn | kept | s / image |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(head + lines) + "\n"


def write_table_csv(table: Table, path: Path) -> Path:
    """Raw values (full precision) of a table, one row per run, written atomically."""
    keys = [k for k, _ in table.columns] + ["routed", "bench_model", "bench_resolution", "bench_status", "source"]
    header = [k.split(":", 1)[1] if k.startswith("setting:") else k for k in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
    return atomic_write_text(path, buffer.getvalue())


def read_table_csv(path: str | Path) -> list[dict[str, str]]:
    """A table CSV back as dicts (strings), e.g. to compare reports."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


# =========================================================================== plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        # the temp name has no .png suffix: give the format explicitly; no timestamp metadata,
        # so a rerun writes the same bytes
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def plot_sad_vs_keep(table: Table, path: Path, title: str | None = None) -> Path:
    """SAD against the mean kept ratio, one labelled point per run with both (ViTMatte at 1).

    Runs that did not finish but left partial metrics are drawn as crosses.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    points = [(row["keep_ratio"], row["sad"], run) for row, run in zip(table.rows, table.runs)
              if row["keep_ratio"] is not None and row["sad"] is not None]
    for i, (x, y, run) in enumerate(points):
        marker = "o" if run.finished else "x"
        ax.plot([x], [y], marker, color=f"C{i % 10}", label=_label(run, table.setting_keys)
                + ("" if run.finished else " (partial)"))
        ax.annotate(_label(run, table.setting_keys), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if points:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no run with SAD and kept ratio", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("kept ratio (share of tokens in global attention; 1 = no routing)")
    ax.set_ylabel("SAD (thousands, lower is better)")
    ax.set_title(title or f"{table.sweep}: accuracy vs. kept ratio")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_memory_vs_resolution(points: Sequence[BenchPoint], path: Path) -> Path:
    """Peak memory against megapixels per benchmark model and device (log-log).

    Hollow markers: the pre-run estimate of points skipped or failed for memory.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = bench_labels()
    series = dict.fromkeys((p.source, p.model) for p in points)
    measured = False
    for i, (source, model) in enumerate(series):
        rows = sorted((p for p in points if (p.source, p.model) == (source, model)), key=lambda p: p.pixels)
        ok = [p for p in rows if p.status == "ok" and p.peak_bytes]
        device = rows[0].device or Path(source).stem
        name = labels.get(model, model)
        if ok:
            measured = True
            ax.plot([p.pixels / 1e6 for p in ok], [p.peak_bytes / GIB for p in ok], "o-", color=f"C{i % 10}",
                    label=f"{name} ({device})")
        est = [p for p in rows if p.status != "ok" and p.estimate_bytes]
        if est:
            ax.plot([p.pixels / 1e6 for p in est], [p.estimate_bytes / GIB for p in est], "o", mfc="none",
                    color=f"C{i % 10}", label=None if ok else f"{name} ({device}, estimate)")
    if measured:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no measured points", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("megapixels")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title("peak memory vs. resolution (hollow: pre-run estimate, point not run)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# =========================================================================== RESULTS.md
RESULTS_TEMPLATE = """# Results

Hand-written notes go here. `python -m mematte.report` only rewrites the part between the
report markers below; everything outside them is kept as is.

"""


def replace_marked(text: str, content: str, path: Path | str = "RESULTS.md") -> str:
    """``text`` with the part between the report markers replaced by ``content``.

    Without markers, they are appended at the end (after a blank line). Text outside the
    markers is kept byte for byte.

    Raises:
        ReportError: a marker is missing its pair, repeated, or the end comes first.
    """
    begins, ends = text.count(BEGIN_MARKER), text.count(END_MARKER)
    block = f"{BEGIN_MARKER}\n{content.rstrip()}\n{END_MARKER}"
    if begins == 0 and ends == 0:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{sep}{block}\n"
    start, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begins != 1 or ends != 1 or end < start:
        raise ReportError(
            f"{path}: expected one `{BEGIN_MARKER}` followed by one `{END_MARKER}`, found {begins} and "
            f"{ends}{' (end before begin)' if begins == ends == 1 else ''}. Fix the markers by hand "
            "(the report never rewrites text outside them), or delete both to have them appended"
        )
    return text[:start] + block + text[end + len(END_MARKER):]


def update_results_file(path: str | Path, content: str) -> bool:
    """Write ``content`` between the markers of ``path`` (created from a template if missing).

    Returns True when the file changed. Written atomically.
    """
    path = Path(path)
    old = path.read_text() if path.is_file() else None
    new = replace_marked(old if old is not None else RESULTS_TEMPLATE, content, path)
    if new == old:
        return False
    atomic_write_text(path, new)
    return True


def _demote_headings(markdown: str, levels: int = 2) -> str:
    """``# X`` → ``### X`` (outside code fences), so an included file nests under our headings."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def slug(name: str) -> str:
    """A file-name-safe form of a sweep name (``multiruns/2026-01-01_10-00`` → ``multiruns_2026-01-01_10-00``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "runs"


@dataclass
class ReportOutputs:
    """What :func:`write_report` wrote."""

    tables: dict[str, Table]
    files: list[Path]
    results_md: Path
    results_changed: bool


def results_markdown(tables: Mapping[str, Table], out_dir: Path, plots: Mapping[str, Path],
                     bench_files: Sequence[Path], memory_plot: Path | None, sources: Sequence[str]) -> str:
    """The generated part of RESULTS.md (deterministic: no timestamps, so reruns are no-ops)."""
    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, out_dir)).as_posix()

    lines = ["<!-- generated by `python -m mematte.report`; edits here are overwritten -->", "",
             "## Ablations", "",
             f"Sources: {', '.join(sources)}. SAD, Grad and Conn in thousands, MSE ×1000 (DIM "
             "conventions); `kept` = share of tokens routed to global attention (argmax decisions, "
             "token-weighted over the split); `kept bN` per routed block.", ""]
    if not tables:
        lines += ["No runs.", ""]
    for name, table in tables.items():
        lines += [f"### {name}", "", table_markdown(table).rstrip(), ""]
        if name in plots:
            lines += [f"![{name}: SAD vs. kept ratio]({rel(plots[name])})", ""]
    lines += ["## Benchmark", ""]
    if memory_plot is not None:
        lines += [f"![peak memory vs. resolution]({rel(memory_plot)})", ""]
    if not bench_files:
        lines += ["No benchmark results (`python bench.py` writes experiments/results/bench_<device>.md).", ""]
    for md in bench_files:
        lines += [f"Included from `{rel(md)}`:", "", _demote_headings(md.read_text()).rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def default_bench_csvs(out_dir: Path) -> list[Path]:
    """``<out>/results/bench_cuda.csv`` then ``bench_cpu.csv``, those that exist (GPU first: the paper's)."""
    return [p for p in (out_dir / "results" / "bench_cuda.csv", out_dir / "results" / "bench_cpu.csv") if p.is_file()]


def write_report(
    runs: Sequence[Run],
    out_dir: str | Path = "experiments",
    bench_csvs: Sequence[str | Path] | None = None,
    bench_resolution: tuple[int, int] | None = None,
    sources: Sequence[str] = (),
    plots: bool = True,
) -> ReportOutputs:
    """Tables (md, csv), plots and the generated part of ``<out>/RESULTS.md``.

    Args:
        runs: from :func:`collect_runs`.
        out_dir: tables and plots go to ``<out>/report/``, RESULTS.md to ``<out>/``.
        bench_csvs: benchmark CSVs to join and plot; None = :func:`default_bench_csvs`. The
            markdown next to each (same stem) is included in RESULTS.md.
        bench_resolution: (height, width) of the memory/latency columns (default: the largest
            measured for every matched model).
        sources: where the runs came from, for the text.
        plots: draw PNGs (off: tables and RESULTS.md only).
    """
    out_dir = Path(out_dir)
    report_dir = out_dir / "report"
    csvs = [Path(p) for p in (default_bench_csvs(out_dir) if bench_csvs is None else bench_csvs)]
    bench = [p for c in csvs for p in read_bench_csv(c)]
    tables = {name: build_table(name, group, bench, bench_resolution) for name, group in group_sweeps(runs).items()}
    files: list[Path] = []
    plot_paths: dict[str, Path] = {}
    for name, table in tables.items():
        stem = report_dir / slug(name)
        plot_path = stem.with_name(f"{stem.name}_sad_vs_keep.png")
        md = f"# {name}\n\n" + table_markdown(table)
        if plots:
            plot_paths[name] = plot_sad_vs_keep(table, plot_path)
            md += f"\n![SAD vs. kept ratio]({plot_path.name})\n"
            files.append(plot_path)
        files += [atomic_write_text(stem.with_suffix(".md"), md), write_table_csv(table, stem.with_suffix(".csv"))]
    memory_plot = None
    if bench and plots:
        memory_plot = plot_memory_vs_resolution(bench, report_dir / "memory_vs_resolution.png")
        files.append(memory_plot)
    bench_md = [c.with_suffix(".md") for c in csvs if c.with_suffix(".md").is_file()]
    content = results_markdown(tables, out_dir, plot_paths, bench_md, memory_plot, sources or ["(given runs)"])
    results_md = out_dir / "RESULTS.md"
    changed = update_results_file(results_md, content)
    return ReportOutputs(tables=tables, files=files, results_md=results_md, results_changed=changed)


# =========================================================================== demo data
def write_demo_sweeps(root: str | Path) -> Path:
    """FABRICATED sweep folders (numbers made up) in the layout train.py writes, for demos.

    Two sweeps (``demo_router``: 3 jobs, ``demo_keep_ratio``: 3 jobs + 1 crashed) under
    ``<root>/demo_<name>/2000-01-01_00-00-00/<job>/`` with ``metrics.json`` and
    ``.hydra/overrides.yaml``. Used by notebooks/report.ipynb when no real sweep exists.
    """
    root = Path(root)
    sweeps = {
        "demo_router": [["router=none"], ["router=local_global"], ["router=local"]],
        "demo_keep_ratio": [["routing.target=0.1"], ["routing.target=0.25"], ["routing.target=0.5"],
                            ["routing.target=0.75"]],
    }
    for name, jobs in sweeps.items():
        for num, overrides in enumerate(jobs):
            job = root / name / "2000-01-01_00-00-00" / str(num)
            options = parse_overrides(overrides)
            routed = options.get("router", "local_global") != "none"
            keep = float(options.get("routing.target", 0.25)) if routed else None
            all_overrides = [f"+sweep={name}", "experiment=tiny_cpu", *overrides]
            atomic_write_text(job / ".hydra" / "overrides.yaml", yaml.safe_dump(all_overrides))
            atomic_write_text(job / ".hydra" / "config.yaml", yaml.safe_dump({"task_name": "train", "sweep_name": name}))
            if name == "demo_keep_ratio" and num == 3:  # a crashed job: no metrics.json
                atomic_write_text(job / "run_state.json", json.dumps(
                    {"status": "failed", "attempts": [{"step": 37, "status": "failed",
                                                       "error": "RuntimeError: demo crash"}]}))
                continue
            sad = 10.0 + (0 if keep is None else 4.0 * (0.5 - keep) ** 2 + 0.3 * num)
            test = {"sad": sad, "mse": 2.0 + sad / 10, "grad": sad * 0.8, "conn": sad * 1.05}
            if keep is not None:
                test["keep_ratio"] = keep
                test.update({f"keep_ratio/block{b}": keep * f for b, f in zip((2, 5, 8, 11), (1.2, 1.0, 0.9, 0.9))})
            config = {"sweep_name": name, "task_name": "train",
                      "model": {"backbone": {"embed_dim": 384, "attn_impl": "sdpa",
                                             "global_block": {"keep_ratio": keep} if routed else None}}}
            summary = {"config": config, "val_untrained": dict(test), "val_final": dict(test), "test": test,
                       "train_seconds": 1.0, "global_step": 100, "best_checkpoint": None}
            atomic_write_text(job / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return root


# =========================================================================== CLI
def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give HEIGHTxWIDTH, e.g. 2048x2048")
    return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mematte.report",
        description="Ablation tables, plots and RESULTS.md from sweep runs (W&B API or local files).",
    )
    parser.add_argument("--runs", nargs="+", action="extend", metavar="DIR",
                        help="folders searched for training runs at any depth, all reported (default: the "
                        f"named sweeps under {' and '.join(DEFAULT_RUNS)})")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read runs from the W&B API first (needs WANDB_MODE online and `wandb login`)")
    parser.add_argument("--group", action="append", default=[], metavar="G",
                        help="only these sweeps (= W&B groups); repeatable")
    parser.add_argument("--bench", nargs="+", action="extend", metavar="CSV",
                        help="benchmark CSVs to join and plot (default: <out>/results/bench_{cuda,cpu}.csv if present)")
    parser.add_argument("--bench-resolution", type=_resolution, metavar="HxW",
                        help="resolution of the memory/latency columns (default: largest common measured)")
    parser.add_argument("--out", default="experiments", metavar="DIR",
                        help="output folder: <out>/report/*, <out>/RESULTS.md (default: experiments)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit code (0 ok, 2 bad inputs, with one line saying what to fix)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="report: %(message)s")
    try:
        runs = collect_runs(args.runs, args.wandb, args.group)
        roots = args.runs or default_roots()
        sources = [f"W&B {args.wandb}"] if any(r.source == "wandb" for r in runs) else \
            [f"`{_display_path(Path(r))}`" for r in roots]
        outputs = write_report(runs, args.out, args.bench, args.bench_resolution, sources, plots=not args.no_plots)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    for name, table in outputs.tables.items():
        done = sum(r["status"] == "ok" for r in table.rows)
        print(f"{name}: {done}/{len(table.rows)} runs finished -> {Path(args.out) / 'report' / slug(name)}.md")
    print(f"{outputs.results_md} {'updated' if outputs.results_changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
