"""Joining runs to ``bench.py`` results: peak memory and latency at a common resolution, by architecture."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mematte.report._common import ReportError, config_lookup, read_yaml
from mematte.report.runs import Run, parse_overrides


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
    return Path(__file__).resolve().parents[3] / "conf"


def bench_signatures(conf_dir: Path | None = None) -> dict[str, tuple[int, bool, bool]]:
    """Bench model key → (embed dim, routed, naive attention), from ``conf/bench.yaml``.

    Each bench model is a list of ``train.py`` overrides; the backbone option's embed dim is
    read from ``conf/backbone/<option>.yaml``. Falls back to the key's name
    (``mematte_s``, ``vitmatte_b_naive``) when the config folder is not there.
    """
    conf_dir = conf_dir or _conf_dir()
    widths = {"t": 192, "s": 384, "b": 768}
    signatures: dict[str, tuple[int, bool, bool]] = {}
    models = ((read_yaml(conf_dir / "bench.yaml") or {}).get("models") or {})
    for key, spec in models.items():
        overrides = parse_overrides((spec or {}).get("overrides") or [])
        backbone = read_yaml(conf_dir / "backbone" / f"{overrides.get('backbone', 'vit_tiny')}.yaml") or {}
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
    models = ((read_yaml((conf_dir or _conf_dir()) / "bench.yaml") or {}).get("models") or {})
    return {str(k): str((v or {}).get("label", k)) for k, v in models.items()}


def run_signature(run: Run) -> tuple[int, bool, bool] | None:
    """(embed dim, routed, naive attention) of a run's net, for joining benchmark rows."""
    backbone = config_lookup(run.config, "model.backbone")
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
