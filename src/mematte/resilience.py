"""Surviving kills, preemption and requeues: resume discovery, run state, signals, atomic saves.

How a training run survives an interruption (see docs/reliability.md):

* **Resume discovery** (:func:`plan_resume`): ``python train.py <overrides>`` first looks for the
  newest earlier run of the same command — a run directory whose ``.hydra/overrides.yaml``
  holds the same overrides (ignoring ``resume`` / ``ckpt_path`` / ``hydra.*``), which has an
  intact ``checkpoints/last.ckpt``, is not finished (no ``metrics.json``, ``run_state.json``
  status not ``finished``) and is not held by a live process (``.lock``). If found, the run
  continues *in that directory* (checkpoints, csv, W&B run id) from ``last.ckpt``.
* **Run state** (``<run>/run_state.json``): status, W&B run id, the untrained validation
  metrics, and one entry per attempt (start, host, pid, step resumed from, end status).
* **Preemption** (:class:`Preemption`): SIGTERM / SIGUSR1 (configurable) stop training at the
  next step boundary (after a validation that is under way), save ``last.ckpt`` and exit;
  under SLURM the requeue signal also requeues the job (``scontrol requeue``).
* **Atomic checkpoints** (:class:`AtomicCheckpointIO`): checkpoints are written to a temporary
  file next to the target, fsynced and renamed, so a kill during a save never leaves a
  truncated ``last.ckpt`` (Lightning's own writer stages in ``$TMPDIR`` and *copies* across
  filesystems, e.g. node-local /tmp → network run directory, which is not atomic). A full
  disk keeps the previous file and stops the run with :class:`~mematte.atomic.DiskFullError`
  (which file, how many bytes it needed, how many were free).
* **Lost DDP ranks** (:class:`LostRankWatchdog`): when a DDP process dies, the others stop
  within a bounded time with an error naming the lost rank, recorded in ``run_state.json``.
* **RNG state** (:func:`collect_rng_state` / :func:`restore_rng_state`): stored in every
  checkpoint by :class:`~mematte.lit_module.MattingModule` and restored before the first
  resumed batch; the data order is restored by :mod:`mematte.data.datamodule`'s resumable
  sampler.
"""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mematte.atomic import atomic_path, atomic_write_text, clean_stale_temp_files

__all__ = [
    "RUN_STATE_FILE",
    "AtomicCheckpointIO",
    "Preemption",
    "ResumePlan",
    "RunLock",
    "checkpoint_is_intact",
    "checkpoint_nbytes",
    "clean_stale_temp_files",
    "collect_rng_state",
    "find_resumable_run",
    "resumable_runs",
    "is_finished",
    "LostRank",
    "LostRankWatchdog",
    "normalized_overrides",
    "plan_resume",
    "read_run_state",
    "requeue_job_id",
    "requeue_slurm_job",
    "restore_csv_history",
    "restore_rng_state",
    "update_run_state",
]

log = logging.getLogger("mematte")

RUN_STATE_FILE = "run_state.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Overrides that say *how* to run, not *what*: a rerun with a different value is the same run.
RESUME_NEUTRAL_KEYS = ("resume", "ckpt_path")
# Where earlier runs of a task live (relative to <log_dir>/<task_name>; see conf/hydra/default.yaml).
RUN_DIR_GLOBS = ("runs/*", "multiruns/*/*")
# Set by the process that decides (global rank 0) for DDP processes it launches later.
_ENV_RESUME_DIR = "MEMATTE_RESUME_RUN_DIR"
_ENV_RESUME_CKPT = "MEMATTE_RESUME_CKPT"
_ENV_RESUME_STEP = "MEMATTE_RESUME_STEP"
_ENV_RESUME_PID = "MEMATTE_RESUME_DECIDED_BY"


# --------------------------------------------------------------------------- run state
def read_run_state(run_dir: str | Path) -> dict[str, Any]:
    """``<run>/run_state.json`` as a dict (empty if missing or unreadable)."""
    path = Path(run_dir) / RUN_STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def update_run_state(run_dir: str | Path, replace: bool = False, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``<run>/run_state.json`` (written atomically); returns the new state.

    ``replace=True`` drops what the file held (a new run in a reused directory).
    """
    state = {} if replace else read_run_state(run_dir)
    state.update(fields)
    atomic_write_text(Path(run_dir) / RUN_STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return state


def is_finished(run_dir: str | Path) -> bool:
    """Finished: ``run_state.json`` says so, or (runs from before it existed) ``metrics.json`` is there."""
    run_dir = Path(run_dir)
    status = read_run_state(run_dir).get("status")
    return status == "finished" if status is not None else (run_dir / "metrics.json").is_file()


def checkpoint_is_intact(path: str | Path) -> bool:
    """Cheap integrity check: ``torch.save`` files are zip archives whose directory is written last.

    A file cut short (kill during a non-atomic save, full disk) has no end-of-archive record,
    so ``zipfile`` rejects it without reading the tensors.
    """
    path = Path(path)
    try:
        return path.is_file() and path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a Lightning checkpoint (memory-mapped: tensors are not read)."""
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return int(ckpt.get("global_step", 0))


# Checkpoint key of the log rows of the step a checkpoint closes (see Preemption.on_save_checkpoint)
PENDING_LOG_ROWS = "mematte_pending_log_rows"


def checkpoint_log_rows(path: str | Path) -> list[dict[str, Any]]:
    """The log rows a checkpoint carries for its last step (memory-mapped read; [] if none)."""
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return [dict(row) for row in ckpt.get(PENDING_LOG_ROWS, [])]


# --------------------------------------------------------------------------- locking
class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``, held while a process trains in that directory.

    Keeps a rerun from resuming into a run that is still alive (two processes writing one
    directory). The kernel drops the lock when the holder dies, kill -9 included. Where the
    filesystem has no working locks (some network mounts), locking is skipped with a warning.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._handle: Any = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        except OSError as err:  # ENOLCK etc.: no locks on this filesystem
            log.warning("cannot lock %s (%s): not guarding against concurrent resumes", self.path, err)
            handle.close()
            return True
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def is_held_elsewhere(self) -> bool:
        """True if another live process holds the lock (probes by taking and dropping it)."""
        if not self.path.exists():
            return False
        if not self.acquire():
            return True
        self.release()
        return False

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# --------------------------------------------------------------------------- discovery
def _override_key(override: str) -> str:
    """``+a.b=1`` / ``~a`` / ``++a=2`` → ``a.b`` / ``a`` / ``a``."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def normalized_overrides(overrides: Iterable[str], neutral: Sequence[str] = RESUME_NEUTRAL_KEYS) -> list[str]:
    """Overrides that define a run, sorted (order on the command line does not matter)."""
    kept = []
    for override in overrides:
        key = _override_key(override)
        if key in neutral or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        kept.append(override.strip())
    return sorted(kept)


def _saved_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run was started with: ``run_state.json`` (written by train()), else Hydra's copy."""
    recorded = read_run_state(run_dir).get("overrides")
    if isinstance(recorded, list):
        return [str(o) for o in recorded]
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:  # a half-written file from a run killed at start: not a candidate
        return None


def _candidate_dirs(search_root: Path, extra: Sequence[Path]) -> list[Path]:
    dirs = {p.resolve() for p in extra if p.is_dir()}
    for pattern in RUN_DIR_GLOBS:
        dirs.update(p.resolve() for p in search_root.glob(pattern) if p.is_dir())
    return list(dirs)


@dataclass
class ResumeCandidate:
    """An earlier run of the same command that can be continued."""

    run_dir: Path
    checkpoint: Path
    mtime: float


def resumable_runs(
    search_root: str | Path, overrides: Iterable[str], also_check: Sequence[str | Path] = ()
) -> list[ResumeCandidate]:
    """Unfinished runs of the same command with an intact ``last.ckpt``, newest first.

    Args:
        search_root: ``<log_dir>/<task_name>``; run dirs are ``runs/*`` and ``multiruns/*/*``.
        overrides: this run's command-line overrides (``hydra.overrides.task``).
        also_check: further run dirs to consider (e.g. a fixed ``hydra.run.dir``).

    Newest means the most recently written ``last.ckpt``. Live runs are not filtered out here
    (see :func:`find_resumable_run`).
    """
    wanted = normalized_overrides(overrides)
    found: list[ResumeCandidate] = []
    for run_dir in _candidate_dirs(Path(search_root), [Path(p) for p in also_check]):
        ckpt = run_dir / LAST_CHECKPOINT
        if not ckpt.is_file() or is_finished(run_dir):
            continue
        saved = _saved_overrides(run_dir)
        if saved is None or normalized_overrides(saved) != wanted:
            continue
        if not checkpoint_is_intact(ckpt):
            log.warning("ignoring %s: the checkpoint is damaged (cut short?)", ckpt)
            continue
        found.append(ResumeCandidate(run_dir, ckpt, ckpt.stat().st_mtime))
    return sorted(found, key=lambda c: c.mtime, reverse=True)


def find_resumable_run(
    search_root: str | Path, overrides: Iterable[str], also_check: Sequence[str | Path] = ()
) -> ResumeCandidate | None:
    """The newest of :func:`resumable_runs` that no live process is training in."""
    for candidate in resumable_runs(search_root, overrides, also_check):
        if RunLock(candidate.run_dir).is_held_elsewhere():
            log.warning("not resuming %s: another live process is training there", candidate.run_dir)
            continue
        return candidate
    return None


def existing_best_checkpoint(best: str | Path | None, dirpath: str | Path | None) -> str | None:
    """The best checkpoint to test, as a file that exists.

    A kill between a validation that saved a new best checkpoint (deleting the old one) and
    the next ``last.ckpt`` leaves ``last.ckpt`` naming the deleted file as best; a resumed run
    restores that name. Then the newest ``best*.ckpt`` left in ``dirpath`` is the best one
    (it replaced the deleted file). None when there is none.
    """
    if best and Path(best).is_file():
        return str(best)
    if not dirpath or not Path(dirpath).is_dir():
        return None
    left = sorted(Path(dirpath).glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best or left:
        log.warning("best checkpoint %s is gone (a kill right after a new best was saved?); testing %s",
                    best or "(none recorded)", left[-1] if left else "the last weights")
    return str(left[-1]) if left else None


# Config entries that name a run's place or label it but do not change what it computes:
# left out of :func:`config_fingerprint`. Top-level keys, then keys dropped at any depth.
FINGERPRINT_NEUTRAL_KEYS = ("paths", "logger", "extras", "hydra", "tags", "sweep_name", "sweep_value", "resume",
                            "reuse_finished")
FINGERPRINT_NEUTRAL_LEAVES = ("dirpath", "save_dir", "default_root_dir", "submitit_folder")


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Hash of what a training run computes: its resolved config without paths and labels.

    Two sweep jobs with the same fingerprint (e.g. MEMatte's default setting, which is a row of
    several ablations, with the same seed) train the same model; see :func:`find_finished_twin`.
    """
    import hashlib

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): strip(v) for k, v in value.items() if k not in FINGERPRINT_NEUTRAL_LEAVES}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    kept = {k: strip(v) for k, v in config.items() if k not in FINGERPRINT_NEUTRAL_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_finished_twin(search_root: str | Path, fingerprint: str, exclude: str | Path | None = None) -> Path | None:
    """The newest finished run under ``search_root`` (``runs/*``, ``multiruns/*/*``) whose
    ``metrics.json`` carries ``fingerprint`` and was trained there (not itself reused)."""
    found: list[tuple[float, Path]] = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for run_dir in _candidate_dirs(Path(search_root), []):
        summary_path = run_dir / "metrics.json"
        if run_dir.resolve() == skip or not summary_path.is_file() or not is_finished(run_dir):
            continue
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            continue
        if summary.get("config_fingerprint") == fingerprint and not summary.get("reused_from"):
            found.append((summary_path.stat().st_mtime, run_dir))
    return max(found)[1] if found else None


@dataclass
class ResumePlan:
    """Where this run writes and which checkpoint it starts from.

    Attributes:
        run_dir: the output directory (an earlier run's when resuming).
        ckpt_path: checkpoint for ``trainer.fit(ckpt_path=...)``, or None for a fresh start.
        resumed: True when continuing an earlier run in ``run_dir``.
        start_step: ``global_step`` of ``ckpt_path`` when resuming (0 otherwise).
        lock: the lock this process holds on ``run_dir`` (None on non-zero ranks).
        log_handler: the extra log file handler into a resumed ``run_dir`` (see
            :func:`attach_log_file`).
    """

    run_dir: Path
    ckpt_path: str | None
    resumed: bool = False
    start_step: int = 0
    lock: RunLock | None = field(default=None, repr=False)
    log_handler: logging.Handler | None = field(default=None, repr=False)

    def release(self) -> None:
        """Drop the run-dir lock and the extra log file (the run is over)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None


def _global_rank_from_env() -> int:
    """Rank of this process as launchers (torchrun, srun) set it before Lightning starts."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _is_primary() -> bool:
    """True for the process that decides: global rank 0, not a process Lightning's DDP launched."""
    return _global_rank_from_env() == 0 and os.environ.get("LOCAL_RANK", "0") in ("", "0")


def plan_resume(
    output_dir: str | Path,
    search_root: str | Path,
    overrides: Iterable[str],
    resume: str | bool | None,
    ckpt_path: str | None,
) -> ResumePlan:
    """Decide where this training run writes and which checkpoint it continues from.

    Args:
        output_dir: this run's fresh Hydra output directory.
        search_root: ``<log_dir>/<task_name>``.
        overrides: this run's task overrides.
        resume: config option ``resume``: ``auto`` (continue the newest unfinished run of the
            same command, if any) or ``never``.
        ckpt_path: config option ``ckpt_path``: None, ``last`` (like ``auto``, but a
            resumable run must exist) or a checkpoint file (a new run dir starts from it).

    DDP processes that Lightning launches follow the decision of the process that launched
    them (environment variables); other non-zero ranks (srun, torchrun) decide alike but do
    not lock.
    """
    output_dir = Path(output_dir).resolve()
    mode = {True: "auto", False: "never", None: "auto"}.get(resume, str(resume).lower())  # type: ignore[arg-type]
    if mode not in ("auto", "never"):
        raise ValueError(f"resume={resume!r} (conf/train.yaml): choose auto or never")
    decided_by = os.environ.get(_ENV_RESUME_PID)
    if decided_by and decided_by != str(os.getpid()) and not _is_primary():  # launched by rank 0
        ckpt = os.environ.get(_ENV_RESUME_CKPT) or None
        run_dir = Path(os.environ.get(_ENV_RESUME_DIR) or output_dir)
        step = os.environ.get(_ENV_RESUME_STEP) or ""
        return ResumePlan(run_dir, ckpt, resumed=step != "", start_step=int(step or 0))

    primary = _is_primary()
    plan = ResumePlan(output_dir, None)
    if ckpt_path and ckpt_path != "last":  # an explicit file: a new run started from it
        plan.ckpt_path = str(ckpt_path)
    elif mode == "auto" or ckpt_path == "last":
        for candidate in resumable_runs(search_root, overrides, also_check=[output_dir]):
            lock = RunLock(candidate.run_dir) if primary else None
            if lock is not None and not lock.acquire():
                log.warning("not resuming %s: another live process is training there", candidate.run_dir)
                continue
            plan = ResumePlan(
                candidate.run_dir, str(candidate.checkpoint), resumed=True,
                start_step=checkpoint_step(candidate.checkpoint), lock=lock,
            )
            break
        else:
            if ckpt_path == "last":
                raise FileNotFoundError(
                    f"ckpt_path=last: no unfinished earlier run of this command with {LAST_CHECKPOINT} "
                    f"under {search_root}; run without ckpt_path to start fresh"
                )
    if primary:
        if plan.lock is None:  # keep others from resuming into this run while it trains
            lock = RunLock(plan.run_dir)
            plan.lock = lock if lock.acquire() else None
        # DDP processes Lightning launches later inherit the decision
        os.environ[_ENV_RESUME_PID] = str(os.getpid())
        os.environ[_ENV_RESUME_DIR] = str(plan.run_dir)
        os.environ[_ENV_RESUME_CKPT] = plan.ckpt_path or ""
        os.environ[_ENV_RESUME_STEP] = str(plan.start_step) if plan.resumed else ""
    return plan


# --------------------------------------------------------------------------- loggers
def restore_csv_history(logger: Any, before_step: int, pending_rows: Sequence[Mapping[str, Any]] = ()) -> int:
    """Keep a resumed run's earlier CSV rows (``step < before_step``) in ``metrics.csv``.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts. Rows from the
    interrupted attempt up to the checkpoint are kept; later ones are dropped because the
    resumed run logs those steps again. ``pending_rows`` (:func:`checkpoint_log_rows`) are the
    rows of the checkpoint's last step: Lightning logs them only after the checkpoint is
    written, so a process that died in between (a DDP rank blocked in the checkpoint's
    barrier by a dead peer, a kill -9) never wrote them; they are added where missing. The
    old file is first renamed to ``metrics.before_resume.csv`` so that a kill during this
    repair loses nothing (the next resume reads it from there). Returns the number of rows kept.
    """
    log_dir = Path(logger.log_dir)
    current = log_dir / "metrics.csv"
    backup = log_dir / "metrics.before_resume.csv"
    if current.is_file() and not backup.is_file():
        os.replace(current, backup)
    header: list[str] = []
    rows: list[dict[str, Any]] = []
    if backup.is_file():
        with backup.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") not in (None, "") and float(r["step"]) < before_step]
    missing = [dict(r) for r in pending_rows if int(r["step"]) < before_step and not _row_logged(rows, r)]
    if not rows and not missing:
        return 0
    if missing:
        rows = sorted([*rows, *missing], key=lambda r: float(r["step"]))  # stable: order within a step kept
    writer = logger.experiment  # created now, with no old file left for it to delete
    # Future saves add their new keys to these and rewrite the file with the union header.
    writer.metrics_keys = sorted({*getattr(writer, "metrics_keys", []), *header, *(k for r in missing for k in r)})
    with atomic_path(current) as tmp, tmp.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
        out.writeheader()
        out.writerows(rows)
    backup.unlink(missing_ok=True)
    return len(rows)


def _row_logged(rows: Sequence[Mapping[str, Any]], row: Mapping[str, Any]) -> bool:
    """Whether ``rows`` already hold ``row``'s values at its step (a row of the CSV writer)."""
    step = float(row["step"])
    keys = [k for k in row if k != "step"]
    return any(
        r.get("step") not in (None, "") and float(r["step"]) == step and all(r.get(k) not in (None, "") for k in keys)
        for r in rows
    )


def new_wandb_id() -> str:
    """A W&B run id (wandb's own generator when installed)."""
    try:
        from wandb.util import generate_id

        return generate_id()
    except ImportError:
        return secrets.token_hex(4)


# --------------------------------------------------------------------------- RNG state
def collect_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, numpy, random) as tensors and plain values.

    Kept ``torch.load(weights_only=True)``-compatible (no numpy objects).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`collect_rng_state` (CUDA states only if the device count matches)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- checkpoint IO
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temp file next to the target, fsync, rename: never a partial checkpoint.

    Used for local paths; remote URLs (``s3://`` …) keep Lightning's transactional writer.
    The data goes through a Python file object: on a full disk ``torch.save`` to a path only
    says ``unexpected pos …``, while a file object raises ``ENOSPC``, which
    :func:`~mematte.atomic.atomic_path` turns into a :class:`~mematte.atomic.DiskFullError`
    naming the file, the checkpoint's size and the free space (the previous file is kept).

    Checkpoints read back for resuming pass through
    :func:`~mematte.checkpoint_compat.upgrade_checkpoint` (written by another mematte version).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        target = Path(str(path).removeprefix("file://"))
        with atomic_path(target, size_hint=checkpoint_nbytes(checkpoint)) as tmp, tmp.open("wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from mematte.checkpoint_compat import upgrade_checkpoint

        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        return upgrade_checkpoint(checkpoint, path) if "mematte" in checkpoint else checkpoint


def checkpoint_nbytes(checkpoint: Any) -> int:
    """Bytes of tensor data in a (nested) checkpoint: about its size on disk (pickled metadata,
    a few KiB, comes on top). Storages shared by several tensors count once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [checkpoint]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


# --------------------------------------------------------------------------- preemption
def _signal_number(sig: str | int) -> int | None:
    """``"SIGUSR1"`` / ``"USR1"`` / ``10`` → 10; None where the platform lacks it."""
    if isinstance(sig, int):
        return sig
    name = str(sig).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    value = getattr(signal, name, None)
    return int(value) if value is not None else None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def requeue_job_id(
    signum: int,
    requeue_signals: Iterable[int],
    mode: str = "auto",
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The SLURM job to requeue after stopping on ``signum``, or None.

    Args:
        signum: the signal that stopped training.
        requeue_signals: signals that mean "time is up, come back later" (SLURM's
            ``--signal=USR1@90`` convention); SIGTERM alone usually means cancelled or
            preempted (SLURM requeues preempted jobs itself).
        mode: ``auto`` (requeue on ``requeue_signals``), ``always`` (on any stop signal) or
            ``never``.
        env: environment (default ``os.environ``).

    Interactive allocations (job name ``bash`` / ``interactive``) are never requeued.
    """
    env = os.environ if env is None else env
    mode = str(mode).lower()
    if mode in ("never", "false"):
        return None
    job = env.get("SLURM_JOB_ID")
    if not job or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    if mode not in ("always", "true") and signum not in set(requeue_signals):
        return None
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{array_task}" if array_job and array_task else job


def requeue_slurm_job(job_id: str, scontrol: str = "scontrol") -> bool:
    """``scontrol requeue <job_id>``; logs and returns whether it worked."""
    try:
        proc = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("could not requeue SLURM job %s (%s): resubmit the same command to resume", job_id, err)
        return False
    if proc.returncode != 0:
        log.error(
            "scontrol requeue %s failed (exit %d): %s — resubmit the same command to resume",
            job_id, proc.returncode, (proc.stderr or proc.stdout).strip(),
        )
        return False
    log.warning("requeued SLURM job %s: it continues from the checkpoint when it restarts", job_id)
    return True


class Preemption(Callback):
    """Stop at a step boundary on a signal, save ``last.ckpt``, requeue under SLURM.

    On a stop signal (default SIGTERM and SIGUSR1) training finishes the current step (and a
    validation under way), then Lightning leaves ``fit`` with ``SIGTERMException``; this
    callback then writes ``last.ckpt`` into the ``save_last`` ModelCheckpoint's directory
    and, for a requeue signal inside a SLURM batch job, runs ``scontrol requeue``. The train
    CLI marks the run ``preempted`` and exits with ``exit_code``; rerunning the same command
    continues it.

    The handlers are installed when fitting starts, before Lightning installs its own, so
    that Lightning's SLURM auto-requeue handler (which saves ``hpc_ckpt_*.ckpt`` from inside
    the signal handler, mid-step) stands aside for the requeue signal; Lightning's SIGTERM
    handling is kept and only deferred past validation. A signal Lightning's
    ``SLURMEnvironment(requeue_signal=...)`` names is handled as a requeue signal too.

    Args:
        signals: signal names (or numbers) that stop training.
        requeue_signals: the subset that also requeues a SLURM job.
        requeue: ``auto`` (SLURM batch jobs, on ``requeue_signals``), ``always`` or ``never``.
        exit_code: exit status of a run stopped this way (0: the stop was orderly).
        flush_loggers: write logger buffers (CSV) at every step, so that a kill -9 loses no
            logged step that a checkpoint covers.
    """

    def __init__(
        self,
        signals: Sequence[str | int] = ("SIGTERM", "SIGUSR1"),
        requeue_signals: Sequence[str | int] = ("SIGUSR1",),
        requeue: str = "auto",
        exit_code: int = 0,
        flush_loggers: bool = True,
    ) -> None:
        super().__init__()
        self.signals = [s for s in (_signal_number(x) for x in signals) if s is not None]
        self.requeue_signals = [s for s in (_signal_number(x) for x in requeue_signals) if s is not None]
        self.requeue = requeue
        self.exit_code = int(exit_code)
        self.flush_loggers = flush_loggers
        self.received: int | None = None
        self.saved_checkpoint: str | None = None
        self.requeued = False
        self._previous: dict[int, Any] = {}
        self._trainer: Trainer | None = None
        self._active = False
        self._deferred = False
        self._pending_rows: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- signal handlers
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        environment = getattr(trainer.strategy, "cluster_environment", None)
        requeue_signal = getattr(environment, "requeue_signal", None)
        if requeue_signal is not None and getattr(environment, "auto_requeue", False):
            self.requeue_signals = sorted({*self.requeue_signals, int(requeue_signal)})
            self.signals = sorted({*self.signals, int(requeue_signal)})
        self.received, self.saved_checkpoint, self.requeued, self._deferred = None, None, False, False
        self._trainer = trainer
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        self._active = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._active:  # fit is over: behave as if we had never been installed
            previous = self._previous.get(signum, signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.received is None:
            self.received = signum
            log.warning("received %s: training stops after the current step and saves last.ckpt", _signal_name(signum))
        if self._trainer is not None:  # Lightning's loops stop at the end of the current step
            _request_lightning_stop(self._trainer)

    def _restore_handlers(self) -> None:
        self._active = False
        self._trainer = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle and previous is not None:
                signal.signal(signum, previous)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore_handlers()

    # ---------------------------------------------------------------- step boundaries
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._pending_rows = []
        if self.flush_loggers:  # the previous step's rows are logged by now
            _flush_loggers(trainer)

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        # Runs before the ModelCheckpoints' hook (Lightning calls those last): a last.ckpt saved
        # now closes this step, whose log rows Lightning writes only after the save. Only the
        # references are kept here; the values are read when a checkpoint is saved.
        self._pending_rows = _step_log_rows(trainer) if self.flush_loggers and trainer.is_global_zero else []
        if self.received is not None:
            _request_lightning_stop(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A process can die after the checkpoint is on disk but before this step's rows are
        # (in DDP a survivor waits in the save's barrier for a dead peer until the watchdog
        # ends it): the checkpoint carries them, and a resume adds the ones the CSV lacks
        # (restore_csv_history).
        if self._pending_rows:
            from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

            checkpoint[PENDING_LOG_ROWS] = [convert_tensors_to_scalars(row) for row in self._pending_rows]

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.flush_loggers and trainer.state.fn == "fit":
            _flush_loggers(trainer)

    def on_validation_batch_end(self, trainer: Trainer, *args: Any) -> None:
        # Lightning would abandon the validation at the next batch; its metrics are not in
        # checkpoints, so a resumed run could not complete it. Finish it, stop right after.
        if trainer.state.fn == "fit" and trainer.received_sigterm:
            _set_lightning_stop(trainer, False)
            self._deferred = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and (self._deferred or self.received is not None):
            self._deferred = False
            _request_lightning_stop(trainer)

    # ---------------------------------------------------------------- stopping
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            # failures keep the last periodic checkpoint (a consistent state); a stop while
            # testing must not overwrite last.ckpt with the best weights loaded for the test
            return
        if self.received is None:
            self.received = int(signal.SIGTERM)
        if trainer.validating:
            log.warning("stopped during validation: keeping the previous last.ckpt")
            return
        path = _last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_checkpoint = path
        log.warning(
            "stopped by %s at global step %d: saved %s", _signal_name(self.received), trainer.global_step, path
        )
        if trainer.is_global_zero:
            job = requeue_job_id(self.received, self.requeue_signals, self.requeue)
            self.requeued = job is not None and requeue_slurm_job(job)

    def describe(self, step: int) -> str:
        """One log line for the end of a stopped run."""
        where = self.saved_checkpoint or "the previous last.ckpt"
        then = "the job was requeued" if self.requeued else "rerun the same command to resume"
        stopped_by = _signal_name(self.received or signal.SIGTERM)
        return f"training stopped by {stopped_by} at global step {step}; checkpoint: {where}; {then}"


def _last_checkpoint_path(trainer: Trainer) -> str:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
    return os.path.join(trainer.default_root_dir, str(LAST_CHECKPOINT))


def _set_lightning_stop(trainer: Trainer, value: bool) -> None:
    # Lightning keeps its "SIGTERM received" flag on the signal connector (no public setter);
    # the loops check it at step boundaries and raise SIGTERMException there.
    trainer._signal_connector.received_sigterm = value


def _request_lightning_stop(trainer: Trainer) -> None:
    _set_lightning_stop(trainer, True)


def _step_log_rows(trainer: Trainer) -> list[dict[str, Any]]:
    """The row Lightning's loggers get at the end of the current training step, as the CSV
    writer stores it (``step`` plus the logged values, still tensors: converting them waits
    for a checkpoint, as on a GPU it synchronises); [] if this step logs nothing.

    Mirrors ``_LoggerConnector.update_train_step_metrics`` / ``log_metrics`` (Lightning has no
    public hook between its checkpoint save and its logging of the step)."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None or not trainer.loggers:
        return []
    if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
        return []
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return []
    metrics = dict(connector.metrics["log"])
    if not metrics:
        return []
    step = metrics.pop("step", None)
    if step is None:
        metrics.setdefault("epoch", trainer.current_epoch)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return [{**metrics, "step": int(step)}]


def _flush_loggers(trainer: Trainer) -> None:
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.save()


# --------------------------------------------------------------------------- lost DDP ranks
@dataclass
class LostRank:
    """A DDP process that died while the run went on (see :class:`LostRankWatchdog`)."""

    rank: int
    pid: int
    how: str  # "was killed by SIGKILL", "exited with code 1", ...
    step: int

    def describe(self, own_rank: int) -> str:
        return (
            f"DDP rank {self.rank} (pid {self.pid}) {self.how} at global step {self.step}: the run cannot go on "
            f"without it, so rank {own_rank} stops too. Rerun the same command to resume from the last "
            "checkpoint (checkpoints/last.ckpt)"
        )


class LostRankWatchdog(Callback):
    """Stop a DDP run within ``timeout_s`` of one of its processes dying, naming the lost rank.

    Lightning starts DDP processes 1..N-1 of a node from process 0 (``_SubprocessScriptLauncher``).
    When one dies (OOM killer, a crash, ``kill -9``), its peers are left waiting in a collective:
    gloo fails at once with ``Connection reset by peer`` (which does not say who), NCCL waits for
    the process group timeout (30 min), and Lightning's own observer SIGKILLs process 0 within
    5 s (no message, nothing recorded). This callback replaces that observer:

    * process 0 watches the processes it launched; each launched process watches process 0;
    * a death is logged at once (rank, pid, signal or exit code, global step) and recorded in
      ``run_state.json`` (the attempt's ``lost_rank``);
    * the survivor normally fails at its next collective: its error gets a note naming the lost
      rank, ``train()`` records the attempt as ``failed`` and the process exits with code 1;
    * if it has not failed ``timeout_s`` after the death (stuck in a collective that waits for
      the dead process), the watchdog ends it with ``exit_code``, after killing the processes it
      launched and recording the attempt.

    Rerunning the same command resumes from ``last.ckpt``. Does nothing outside DDP, and for
    processes started by torchrun or srun (their launcher stops the whole job).

    Args:
        timeout_s: longest a survivor keeps running after a death is seen.
        poll_s: how often the processes are checked.
        exit_code: exit status when the watchdog has to end the process itself.
    """

    def __init__(self, timeout_s: float = 60.0, poll_s: float = 0.5, exit_code: int = 1) -> None:
        super().__init__()
        if timeout_s <= 0 or poll_s <= 0:
            raise ValueError(f"LostRankWatchdog: timeout_s={timeout_s} and poll_s={poll_s} must be > 0")
        self.timeout_s, self.poll_s, self.exit_code = float(timeout_s), float(poll_s), int(exit_code)
        self.lost: LostRank | None = None
        self._children: list[tuple[int, subprocess.Popen]] = []  # (global rank, process) launched here
        self._parent: tuple[int, int] | None = None  # (global rank, pid) of the process that launched this one
        self._own_rank = 0
        self._trainer: Trainer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active = threading.Event()  # a fit / validate / test is under way
        self._unwound = threading.Event()  # the main thread saw the failure (on_exception)

    # ---------------------------------------------------------------- lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._own_rank = trainer.global_rank
        peers = self._find_peers(trainer) if self._thread is None else None
        if peers is not None:
            self.start(*peers)
        self._unwound.clear()
        self._active.set()

    def start(self, children: Sequence[tuple[int, subprocess.Popen]] = (),
              parent: tuple[int, int] | None = None) -> None:
        """Watch from a daemon thread (``setup`` calls this for Lightning's DDP processes).

        Args:
            children: (global rank, process) of each process this one launched.
            parent: (global rank, pid) of the process that launched this one.
        """
        self._children, self._parent = list(children), parent
        self._active.set()
        self._thread = threading.Thread(target=self._watch, name="mematte-lost-rank-watchdog", daemon=True)
        self._thread.start()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._active.clear()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._unwound.set()  # the survivor is failing by itself: no need to end it
        if self._thread is None or isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return  # a stop signal or Ctrl-C (which reaches every rank): not a death
        # the collective's error can come before the next poll sees the death: look now
        deadline = time.monotonic() + 2.0
        while self.lost is None and time.monotonic() < deadline:
            self._check()
            if self.lost is None:
                time.sleep(0.05)
        if self.lost is not None and hasattr(exception, "add_note"):  # Python ≥ 3.11
            exception.add_note(self.lost.describe(self._own_rank))

    @staticmethod
    def _find_peers(
        trainer: Trainer,
    ) -> tuple[list[tuple[int, subprocess.Popen]], tuple[int, int] | None] | None:
        """(children, parent) to watch (see :meth:`start`); None outside Lightning's DDP launcher."""
        from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

        launcher = getattr(trainer.strategy, "launcher", None)
        if not isinstance(launcher, _SubprocessScriptLauncher) or trainer.world_size < 2:
            return None
        first = trainer.node_rank * launcher.num_processes
        if launcher.procs:  # process 0 of this node: it launched the others
            _disarm_lightning_process_observer()
            return [(first + i + 1, proc) for i, proc in enumerate(launcher.procs)], None
        if trainer.local_rank > 0 and os.environ.get(_ENV_RESUME_PID) == str(os.getppid()):
            return [], (first, os.getppid())  # launched by process 0 (it exported its pid)
        return None

    # ---------------------------------------------------------------- watching
    def _watch(self) -> None:
        while self.lost is None:
            time.sleep(self.poll_s)
            if self._active.is_set():
                self._check()
        if self._unwound.wait(self.timeout_s):
            return
        self._end_process()

    def _check(self) -> None:
        """Look for a dead peer; handle the first one found (once)."""
        with self._lock:
            if self.lost is not None:
                return
            found = None
            for rank, proc in self._children:
                code = proc.poll()
                if code is not None and code != 0:
                    how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
                    found = (rank, proc.pid, how)
                    break
            if self._parent is not None and os.getppid() != self._parent[1]:
                found = (*self._parent, "is gone (it launched this process)")
            if found is None:
                return
            step = self._trainer.global_step if self._trainer is not None else -1
            self.lost = LostRank(*found, step=step)
            log.error("%s", self.lost.describe(self._own_rank))
            self._record(ended=False)

    def _record(self, ended: bool) -> None:
        """Note the lost rank in this run's ``run_state.json`` (process 0 of a training run)."""
        if self._trainer is None or self._own_rank != 0 or self.lost is None:
            return
        run_dir = Path(self._trainer.default_root_dir)
        if not (run_dir / RUN_STATE_FILE).is_file():
            return
        state = read_run_state(run_dir)
        attempts = list(state.get("attempts", [])) or [{}]
        entry = {**attempts[-1], "lost_rank": asdict(self.lost)}
        if ended:
            entry.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S"), status="failed", step=self.lost.step,
                         error=f"LostRank: {self.lost.describe(self._own_rank)}")
        attempts[-1] = entry
        update_run_state(run_dir, attempts=attempts, **({"status": "failed"} if ended else {}))

    def _end_process(self) -> None:
        """The survivor is still running ``timeout_s`` after the death: end it (and its children)."""
        log.error("rank %d is still running %.0f s after DDP rank %d was lost (stuck in a collective?): "
                  "ending it with exit code %d", self._own_rank, self.timeout_s,
                  self.lost.rank if self.lost else -1, self.exit_code)
        try:
            self._record(ended=True)
        finally:
            for _, proc in self._children:
                if proc.poll() is None:
                    proc.kill()
            for handler in logging.getLogger().handlers:  # os._exit skips the usual flush
                handler.flush()
            os._exit(self.exit_code)


def _disarm_lightning_process_observer() -> None:
    """Stop Lightning's child-process observer, which SIGKILLs process 0 when a child dies
    (:class:`LostRankWatchdog` handles that instead). Its next check ends its thread."""
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ChildProcessObserver" and hasattr(thread, "_run"):
            thread._run = lambda: True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- misc
def attempt_record(start_step: int, log_dir: str | Path) -> dict[str, Any]:
    """One entry of ``run_state.json["attempts"]``."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "from_step": start_step,
        "hydra_dir": str(log_dir),
    }


def attach_log_file(run_dir: str | Path, name: str) -> logging.Handler:
    """Also write this process's log records to ``<run_dir>/<name>.log`` (append)."""
    handler = logging.FileHandler(Path(run_dir) / f"{name}.log", mode="a")
    existing = next((h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
    if existing is not None and existing.formatter is not None:
        handler.setFormatter(existing.formatter)
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
