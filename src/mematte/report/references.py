"""Reference points of the ablation protocol: training-free baselines (``eval.py baseline=...``),
the ViTMatte teacher run, and learning curves from Lightning's CSV logs."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mematte.report._common import METRICS, ReportError, finite_number, numbers, read_json
from mematte.report.runs import Run, read_job

# where `make ablate` puts them
DEFAULT_BASELINES = "logs/ablate/baselines"
DEFAULT_TEACHER = "logs/ablate/teacher"
# `make ablate`'s longer run of the default MEMatte student (routing curves)
DEFAULT_CURVE = "logs/ablate/curve"
# eval.py's training-free baselines, in the order the tables list them
BASELINE_LABELS = {"closed_form": "closed-form", "knn": "KNN", "lkm": "LKM", "fill_half": "fill-half"}


@dataclass
class Baseline:
    """One training-free baseline scored by ``eval.py baseline=NAME data=D split=S``.

    Attributes:
        name: ``closed_form``, ``knn``, ``lkm``, ``fill_half``...
        data: the dataset option it was scored on (``synthetic``...).
        split: ``test`` or ``val``.
        metrics: ``sad, mse, grad, conn, latency_s``... of that split.
        num_images: images scored (to check it saw the runs' test set).
        path: its ``metrics.json``.
    """

    name: str
    data: str | None
    split: str
    metrics: dict[str, float]
    num_images: int | None
    path: Path
    mtime: float = 0.0

    @property
    def label(self) -> str:
        return f"{BASELINE_LABELS.get(self.name, self.name)} (training-free)"

    @property
    def rank(self) -> tuple[int, str, str]:
        names = list(BASELINE_LABELS)
        return (names.index(self.name) if self.name in names else len(names), self.name, self.split)


def is_baseline_payload(payload: object) -> bool:
    """``metrics.json`` of ``eval.py baseline=...`` (a ``baseline`` name and a ``metrics`` dict)."""
    return isinstance(payload, dict) and bool(payload.get("baseline")) and isinstance(payload.get("metrics"), dict)


def read_baselines(dirs: Sequence[str | Path]) -> tuple[list[Baseline], list[str]]:
    """Every baseline ``metrics.json`` under ``dirs`` (any depth, or the files themselves).

    The same baseline, data and split found twice: the newest file is kept (a note says so).
    Returns the baselines (known ones first) and notes.

    Raises:
        ReportError: a given folder or file does not exist.
    """
    found: dict[tuple[str, str | None, str], Baseline] = {}
    notes: list[str] = []
    for place in (Path(d) for d in dirs):
        if not place.exists():
            raise ReportError(f"baselines folder {place} does not exist: run the training-free baselines "
                              "(`make ablate`, or python eval.py baseline=closed_form data=synthetic split=test "
                              f"hydra.run.dir={place}/closed_form_test) or drop --baselines")
        files = [place] if place.is_file() else sorted(p for p in place.rglob("metrics.json") if ".hydra" not in p.parts)
        for path in files:
            payload = read_json(path)
            if not is_baseline_payload(payload):
                continue
            metrics = numbers(payload["metrics"])
            if not any(m in metrics for m in METRICS):
                notes.append(f"{path}: baseline {payload['baseline']} has no SAD/MSE/Grad/Conn; left out")
                continue
            images = payload.get("num_images")
            base = Baseline(name=str(payload["baseline"]), data=str(payload["data"]) if payload.get("data") else None,
                            split=str(payload.get("split") or "test"), metrics=metrics,
                            num_images=int(images) if isinstance(images, (int, float)) else None, path=path,
                            mtime=path.stat().st_mtime)
            key = (base.name, base.data, base.split)
            if key in found:
                old, new = sorted((found[key], base), key=lambda b: b.mtime)
                notes.append(f"baseline {base.name} {base.data}/{base.split}: {new.path} used, {old.path} older")
                base = new
            found[key] = base
    return sorted(found.values(), key=lambda b: b.rank), notes


def read_teacher(path: str | Path) -> Run:
    """The ViTMatte teacher's train run folder (``metrics.json``, ``csv/metrics.csv``) as a :class:`Run`.

    Raises:
        ReportError: the folder does not exist or is not a ``train.py`` run.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"teacher folder {path} does not exist: train it first (`make ablate`) or drop --teacher")
    run = read_job(path, path.parent)
    if run is None:
        raise ReportError(f"{path} is not a train.py run folder (no metrics.json with a config, no .hydra/): "
                          "pass the teacher's run directory to --teacher")
    run.sweep = "teacher"
    return run


# --------------------------------------------------------------------------- curves
def metrics_csv_files(job_dir: Path) -> list[Path]:
    """The CSV logger files of a run (``csv/metrics.csv``; older layouts ``csv/version_*/metrics.csv``)."""
    direct = job_dir / "csv" / "metrics.csv"
    if direct.is_file():
        return [direct]
    return sorted(job_dir.glob("csv/**/metrics.csv"))


Curves = dict[str, list[tuple[float, float]]]


def read_curves(job_dir: Path | None, want: Callable[[str], bool] | None = None) -> Curves:
    """Learning curves of a run from Lightning's CSV log: column → [(step, value)], by step.

    Rows are logging events padded with blanks/NaN: each column keeps its finite values; a
    step logged twice (a resumed run) keeps the last. ``want`` picks columns (default all but
    ``step``/``epoch``). Empty when the run has no CSV log.
    """
    if job_dir is None:
        return {}
    values: dict[str, dict[float, float]] = {}
    for path in metrics_csv_files(job_dir):
        try:
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    step = finite_number(row.get("step"))
                    if step is None:
                        continue
                    for key, text in row.items():
                        if key in (None, "step", "epoch") or (want is not None and not want(key)):
                            continue
                        value = finite_number(text)
                        if value is not None:
                            values.setdefault(key, {})[step] = value
        except OSError:
            continue
    return {k: sorted(v.items()) for k, v in values.items()}


def baseline_sad(baselines: Sequence[Baseline], name: str, split: str, data: str | None) -> Baseline | None:
    """The baseline ``name`` of ``split`` on ``data`` (any data when ``data`` is unknown)."""
    for base in baselines:
        if base.name == name and base.split == split and (data is None or base.data is None or base.data == data):
            if "sad" in base.metrics:
                return base
    return None
