"""Plots: SAD against the kept share per sweep, memory against resolution, learning curves
(the teacher's validation SAD with the baselines' levels; the default MEMatte run's routing
statistics per block)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mematte.atomic import atomic_path
from mematte.report._common import GIB, Stat
from mematte.report.benchjoin import BenchPoint, bench_labels
from mematte.report.references import Baseline, Curves
from mematte.report.tables import Table


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


def _short(label: str, width: int = 40) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def plot_sad_vs_keep(table: Table, path: Path, title: str | None = None) -> Path:
    """Mean SAD against the mean kept share, one labelled point per setting with ±1 std error
    bars over seeds (ViTMatte at 1); reference rows as horizontal dashed lines.

    Settings with no finished seed but partial metrics are drawn as crosses.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = [row for row in table.rows if row.get("keep_ratio") is not None and row.get("sad") is not None]
    for i, row in enumerate(points):
        finished = any(r.finished for r in row["_runs"])
        sad: Stat = row["_stats"]["sad"]
        kept: Stat = row["_stats"]["keep_ratio"]
        name = _short(row["label"])
        label = f"{name} (n={row['n']})" + ("" if finished else " (partial)")
        ax.errorbar([kept.mean], [sad.mean], yerr=[sad.std or 0.0], xerr=[kept.std or 0.0],
                    fmt="o" if finished else "x", color=f"C{i % 10}", capsize=3, label=label)
        ax.annotate(name, (kept.mean, sad.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for j, ref in enumerate(table.references):
        if ref.get("sad") is not None:
            ax.axhline(ref["sad"], color="0.4", ls=("--", ":", "-.")[j % 3], lw=1, label=ref["label"])
    if points or table.references:
        ax.legend(fontsize=7, loc="best")
    if not points:
        ax.text(0.5, 0.5, "no setting with SAD and kept ratio", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("kept share (tokens in global attention, decisions used; 1 = no routing)")
    ax.set_ylabel("SAD (thousands, lower is better), mean ± std over seeds")
    ax.set_title(title or f"{table.sweep}: accuracy vs. kept ratio")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_teacher_curve(curve: Sequence[tuple[float, float]], baselines: Sequence[Baseline], path: Path,
                       title: str = "ViTMatte teacher: validation SAD") -> Path:
    """The teacher's validation SAD against the step, each baseline's val SAD as a horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if curve:
        ax.plot([s for s, _ in curve], [v for _, v in curve], "o-", color="C0", label="teacher val SAD")
    for j, base in enumerate(b for b in baselines if "sad" in b.metrics):
        ax.axhline(base.metrics["sad"], color=f"C{(j + 1) % 10}", ls="--", lw=1.2, label=f"{base.label} (val)")
    if not curve:
        ax.text(0.5, 0.5, "no val/sad in the teacher's csv/metrics.csv", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("SAD (thousands, lower is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


ROUTING_CURVES = ("keep_ratio_argmax", "keep_ratio_expected", "p_global_std")
CURVE_LABELS = {"keep_ratio_argmax": "kept argmax", "keep_ratio_expected": "kept expected", "p_global_std": "p(global) std"}


def routing_curve_blocks(curves: Mapping[str, Curves], stage: str = "val") -> list[int]:
    """Block numbers with a per-block routing curve in any run."""
    pattern = re.compile(rf"^{stage}/(?:{'|'.join(ROUTING_CURVES)})/block(\d+)$")
    return sorted({int(m.group(1)) for c in curves.values() for k in c for m in [pattern.match(k)] if m})


def plot_routing_curves(curves: Mapping[str, Curves], path: Path, title: str, stage: str = "val") -> Path:
    """Routing statistics against the step: a row per statistic (kept argmax, kept expected,
    p std), a column for the mean over routed blocks and one per block, a line per seed.

    ``curves``: seed label → that run's curves (:func:`~mematte.report.references.read_curves`).
    """
    plt = _pyplot()
    blocks = routing_curve_blocks(curves, stage)
    cols = [""] + [f"/block{b}" for b in blocks]
    fig, axes = plt.subplots(len(ROUTING_CURVES), len(cols), figsize=(2.6 * len(cols) + 1.2, 2.2 * len(ROUTING_CURVES)),
                             sharex=True, sharey="row", squeeze=False)
    drawn = False
    for i, stat in enumerate(ROUTING_CURVES):
        for j, suffix in enumerate(cols):
            ax = axes[i][j]
            for k, (seed, run_curves) in enumerate(curves.items()):
                curve = run_curves.get(f"{stage}/{stat}{suffix}") or []
                if curve:
                    drawn = True
                    ax.plot([s for s, _ in curve], [v for _, v in curve], "o-", ms=3, color=f"C{k % 10}", label=seed)
            if i == 0:
                ax.set_title("mean over blocks" if not suffix else f"block {suffix[len('/block'):]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(CURVE_LABELS[stat], fontsize=8)
            if i == len(ROUTING_CURVES) - 1:
                ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
    if drawn:
        axes[0][0].legend(fontsize=7, loc="best")
    else:
        axes[0][0].text(0.5, 0.5, f"no {stage}/ routing statistics logged", ha="center", va="center",
                        transform=axes[0][0].transAxes)
    fig.suptitle(title, fontsize=10)
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
