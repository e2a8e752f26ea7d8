"""Writing the report: per-sweep tables (md, csv), plots, the claims, learning curves and the
generated part of ``experiments/RESULTS.md``; fabricated demo inputs for the notebook."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mematte.atomic import atomic_write_text
from mematte.report._common import BEGIN_MARKER, END_MARKER, ReportError, display_path, fmt, slug
from mematte.report.benchjoin import read_bench_csv
from mematte.report.claims import Claims, claims_markdown, evaluate_claims, find_row, write_claims_csv
from mematte.report.plots import plot_memory_vs_resolution, plot_routing_curves, plot_sad_vs_keep, plot_teacher_curve
from mematte.report.references import (
    Baseline,
    baseline_sad,
    read_baselines,
    read_curves,
    read_teacher,
)
from mematte.report.runs import Run, data_name, group_sweeps, parse_overrides, run_seed
from mematte.report.tables import Table, build_table, table_markdown, write_block_csv, write_table_csv

# the default MEMatte command of the protocol, whose routing curves the report draws
DEFAULT_MEMATTE = ("ablation_router", "router", "local_global")

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


# =========================================================================== learning curves
@dataclass
class Curves:
    """Learning-curve plots and the text that goes with them (RESULTS.md)."""

    teacher_plot: Path | None = None
    routing_plot: Path | None = None
    teacher_text: list[str] = field(default_factory=list)
    routing_text: list[str] = field(default_factory=list)


def teacher_gap_text(teacher: Run, baselines: Sequence[Baseline]) -> str:
    """The teacher's final test SAD against closed-form's on the same data (gap in %)."""
    test = teacher.splits.get("test") or {}
    data = data_name(teacher)
    closed = baseline_sad(baselines, "closed_form", "test", data)
    if "sad" not in test:
        return ("No test SAD for the teacher (its metrics.json has no `test`: trained with test=false?), so no "
                "comparison with closed-form.")
    if closed is None:
        return (f"Teacher final test SAD {fmt(test['sad'])}; no closed-form baseline on {data or 'its data'}/test "
                "to compare with (`eval.py baseline=closed_form split=test`).")
    base = closed.metrics["sad"]
    gap = (test["sad"] - base) / base * 100 if base else float("nan")
    direction = "lower" if gap < 0 else "higher"
    sizes = ""
    if closed.num_images is not None:
        sizes = f" ({closed.num_images} images for closed-form)"
    return (f"Teacher final test SAD {fmt(test['sad'])} vs. closed-form (training-free) {fmt(base)} on "
            f"{closed.data}/test{sizes}: the teacher is {abs(gap):.1f}% {direction}"
            + (" — a trained ViTMatte that does not beat a training-free matting baseline is not yet a useful "
               "teacher" if gap >= 0 else "") + ".")


def routing_curve_runs(tables: Mapping[str, Table], sweep: str = DEFAULT_MEMATTE[0], key: str = DEFAULT_MEMATTE[1],
                       value: str = DEFAULT_MEMATTE[2]) -> list[Run]:
    """The runs (every seed) of setting ``key=value`` in ``sweep`` that have a local folder."""
    table = tables.get(sweep)
    if table is None:
        return []
    row, _ = find_row(table, key, value)
    return [r for r in (row or {}).get("_runs", []) if r.path is not None]


def write_curves(tables: Mapping[str, Table], teacher: Run | None, baselines: Sequence[Baseline], report_dir: Path,
                 plots: bool = True, curve_run: Path | None = None) -> Curves:
    """(a) the teacher's val SAD with the baselines' val levels; (b) the default MEMatte run's
    val routing statistics per block, every seed, and ``curve_run`` (the same student trained
    longer, validated more often: ``make ablate``'s ``curve``) when given."""
    out = Curves()
    if teacher is None:
        out.teacher_text.append("No teacher run given (`--teacher DIR`; default logs/ablate/teacher when it exists).")
    else:
        curve = read_curves(teacher.path, lambda k: k == "val/sad").get("val/sad", [])
        data = data_name(teacher)
        val_bases = [b for b in baselines if b.split == "val" and (data is None or b.data in (None, data))]
        where = display_path(teacher.path) if teacher.path else teacher.name
        if plots:
            out.teacher_plot = plot_teacher_curve(curve, val_bases, report_dir / "teacher_val_sad.png",
                                                  title="ViTMatte teacher: validation SAD vs. step")
        if curve:
            out.teacher_text.append(f"Teacher `{where}`: validation SAD at {len(curve)} validation(s), "
                                    f"{fmt(curve[0][1])} at step {curve[0][0]:.0f} → {fmt(curve[-1][1])} at step "
                                    f"{curve[-1][0]:.0f}.")
        else:
            out.teacher_text.append(f"Teacher `{where}`: no `val/sad` column in csv/metrics.csv (no curve).")
        if val_bases:
            out.teacher_text.append("Validation SAD of the training-free baselines (dashed): " + ", ".join(
                f"{b.label} {fmt(b.metrics['sad'])}" for b in val_bases if "sad" in b.metrics) + ".")
        else:
            out.teacher_text.append("No training-free baseline on the validation split (`eval.py baseline=... "
                                    "split=val`), so no reference levels in the plot.")
        out.teacher_text.append(teacher_gap_text(teacher, baselines))
    sweep, key, value = DEFAULT_MEMATTE
    runs = routing_curve_runs(tables, sweep, key, value)
    curves = {}
    for i, run in enumerate(runs):
        seed = run_seed(run)
        run_curves = read_curves(run.path, lambda k: k.startswith("val/"))
        if run_curves:
            curves[f"seed {seed}" if seed is not None else f"run {i}"] = run_curves
    if curve_run is not None:
        longer = read_curves(Path(curve_run), lambda k: k.startswith("val/"))
        steps = sorted({step for series in longer.values() for step, _ in series})
        if longer:
            curves[f"longer run ({steps[-1]:.0f} steps)"] = longer
            out.routing_text.append(
                f"`{display_path(Path(curve_run))}`: the same student trained for {steps[-1]:.0f} steps, validated "
                f"at {len(steps)} steps.")
        else:
            out.routing_text.append(f"`{display_path(Path(curve_run))}` has no csv/metrics.csv with val columns.")
    if not runs and not curves:
        out.routing_text.append(f"No {sweep} runs with {key}={value} in local folders: no routing curves.")
    elif not curves:
        out.routing_text.append(f"The {sweep} {key}={value} runs have no csv/metrics.csv: no routing curves.")
    else:
        if plots:
            out.routing_plot = plot_routing_curves(
                curves, report_dir / f"{slug(sweep)}_{slug(value)}_routing.png",
                title=f"{sweep}, {key}={value}: validation routing statistics vs. step")
        have = sorted({k for c in curves.values() for k in c if k.startswith(("val/keep_ratio_", "val/p_global_std"))})
        out.routing_text.append(
            f"Default MEMatte run ({sweep}, {key}={value}; {', '.join(curves)}): validation kept share under the "
            "argmax and expected rules and the spread of p(global), per routed block — "
            + (f"{len(have)} logged series." if have else "none of these statistics is in its csv/metrics.csv "
               "(logged by newer versions only)."))
    return out


# =========================================================================== RESULTS.md
@dataclass
class ReportOutputs:
    """What :func:`write_report` wrote."""

    tables: dict[str, Table]
    files: list[Path]
    results_md: Path
    results_changed: bool
    claims: Claims | None = None
    curves: Curves | None = None


def results_markdown(tables: Mapping[str, Table], out_dir: Path, plots: Mapping[str, Path],
                     bench_files: Sequence[Path], memory_plot: Path | None, sources: Sequence[str],
                     claims: Claims | None = None, curves: Curves | None = None,
                     references: Sequence[str] = ()) -> str:
    """The generated part of RESULTS.md (deterministic: no timestamps, so reruns are no-ops)."""
    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, out_dir)).as_posix()

    lines = ["<!-- generated by `python -m mematte.report`; edits here are overwritten -->", "",
             "## Ablations", "",
             f"Sources: {', '.join(sources)}." + (f" References: {'; '.join(references)}." if references else ""), "",
             "SAD, Grad and Conn in thousands, MSE ×1000 (DIM conventions), on the test split (the final "
             "validation where a run has no test). Each row is one setting: runs that differ only by `seed` are "
             "aggregated to mean ± sample std (ddof 1), `seeds` = n (`±—`: a single seed); reference rows in "
             "italics (training-free baselines on the same data and split, the ViTMatte teacher) are single "
             "evaluations. `kept (used)` = share of tokens routed to global attention by the decisions the run used; "
             "`kept argmax` / `kept expected` = the share under each inference rule; `p std` = spread of p(global) "
             "over tokens; `enrichment` = share of kept tokens in the trimap's unknown region ÷ the unknown share of "
             "all tokens (1 = random). Each table's notes say which decisions its SAD columns were scored with.", ""]
    lines += ["### Paper claims", ""]
    if claims is not None and (claims.comparisons or claims.trends):
        lines += [claims_markdown(claims).rstrip(), "", "Also in `report/claims.md` / `report/claims.csv`.", ""]
    else:
        lines += ["No sweep of the paper's ablations.", ""]
    lines += ["### Learning curves", ""]
    if curves is not None:
        lines += ["#### ViTMatte teacher", ""]
        if curves.teacher_plot is not None:
            lines += [f"![teacher validation SAD vs. step]({rel(curves.teacher_plot)})", ""]
        lines += [" ".join(curves.teacher_text), ""] if curves.teacher_text else []
        lines += ["#### Default MEMatte run: routing statistics", ""]
        if curves.routing_plot is not None:
            lines += [f"![routing statistics vs. step]({rel(curves.routing_plot)})", ""]
        lines += [" ".join(curves.routing_text), ""] if curves.routing_text else []
    else:
        lines += ["Not drawn.", ""]
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
    baselines: Sequence[str | Path] | None = None,
    teacher: str | Path | None = None,
    curve_run: str | Path | None = None,
) -> ReportOutputs:
    """Tables (md, csv), plots, claims, learning curves and the generated part of ``<out>/RESULTS.md``.

    Args:
        runs: from :func:`collect_runs`.
        out_dir: tables and plots go to ``<out>/report/``, RESULTS.md to ``<out>/``.
        bench_csvs: benchmark CSVs to join and plot; None = :func:`default_bench_csvs`. The
            markdown next to each (same stem) is included in RESULTS.md.
        bench_resolution: (height, width) of the memory/latency columns (default: the largest
            measured for every matched model).
        sources: where the runs came from, for the text.
        plots: draw PNGs (off: tables and RESULTS.md only).
        baselines: folders (or files) with training-free baseline ``metrics.json`` (``eval.py
            baseline=...``); None or empty = no baseline rows.
        teacher: the ViTMatte teacher's train run folder; None = no teacher row or curve.
        curve_run: a longer run of the default MEMatte student whose validation routing
            statistics join the routing curves (``make ablate``'s ``curve``); None = none.
    """
    out_dir = Path(out_dir)
    report_dir = out_dir / "report"
    csvs = [Path(p) for p in (default_bench_csvs(out_dir) if bench_csvs is None else bench_csvs)]
    bench = [p for c in csvs for p in read_bench_csv(c)]
    base_list, base_notes = read_baselines(baselines or [])
    teacher_run = read_teacher(teacher) if teacher is not None else None
    tables = {name: build_table(name, group, bench, bench_resolution, base_list, teacher_run)
              for name, group in group_sweeps(runs).items()}
    for table in tables.values():
        table.notes += base_notes
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
        if table.blocks is not None:
            files.append(write_block_csv(table.blocks, stem.with_name(f"{stem.name}_blocks.csv")))
    claims = evaluate_claims(tables)
    files += [atomic_write_text(report_dir / "claims.md", "# Paper claims\n\n" + claims_markdown(claims)),
              write_claims_csv(claims, report_dir / "claims.csv")]
    curves = write_curves(tables, teacher_run, base_list, report_dir, plots,
                          Path(curve_run) if curve_run is not None else None)
    files += [p for p in (curves.teacher_plot, curves.routing_plot) if p is not None]
    memory_plot = None
    if bench and plots:
        memory_plot = plot_memory_vs_resolution(bench, report_dir / "memory_vs_resolution.png")
        files.append(memory_plot)
    bench_md = [c.with_suffix(".md") for c in csvs if c.with_suffix(".md").is_file()]
    references = []
    if baselines:
        references.append(f"training-free baselines from {', '.join(f'`{display_path(Path(b))}`' for b in baselines)} "
                          f"({len(base_list)} found)")
    if teacher_run is not None and teacher_run.path is not None:
        references.append(f"ViTMatte teacher `{display_path(teacher_run.path)}`")
    content = results_markdown(tables, out_dir, plot_paths, bench_md, memory_plot, sources or ["(given runs)"],
                               claims, curves, references)
    results_md = out_dir / "RESULTS.md"
    changed = update_results_file(results_md, content)
    return ReportOutputs(tables=tables, files=files, results_md=results_md, results_changed=changed, claims=claims,
                         curves=curves)


# =========================================================================== demo data
def _write_csv_log(job: Path, rows: Sequence[Mapping[str, float]]) -> None:
    """A ``csv/metrics.csv`` as Lightning's CSVLogger writes it (one row per event, blanks elsewhere)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(keys)] + [",".join("" if row.get(k) is None else repr(row[k]) for k in keys) for row in rows]
    atomic_write_text(job / "csv" / "metrics.csv", "\n".join(lines) + "\n")


# the synthetic eval sets' config as a resolved train config holds it (the report reads the
# dataset and the number of test images from it)
DEMO_DATA = {split: {"_target_": "mematte.data.synthetic.SyntheticMattingEvalSet", "num_samples": 16}
             for split in ("val_set", "test_set")}


def write_demo_sweeps(root: str | Path) -> Path:
    """FABRICATED sweep folders (numbers made up) in the layout train.py writes, for demos.

    Two sweeps, every setting with seeds 1 and 2 (``demo_router``: 3 settings;
    ``demo_keep_ratio``: 4 targets, seed 1 of the last crashed) under
    ``<root>/demo_<name>/2000-01-01_00-00-00/<job>/`` with ``metrics.json`` (routing statistics
    and ``test_rules`` for routed runs), ``.hydra/overrides.yaml`` and ``csv/metrics.csv``. Used
    by notebooks/report.ipynb when no real sweep exists.
    """
    root = Path(root)
    blocks = (2, 5, 8, 11)
    sweeps = {
        "demo_router": [["router=none"], ["router=local_global"], ["router=local"]],
        "demo_keep_ratio": [["routing.target=0.1"], ["routing.target=0.25"], ["routing.target=0.5"],
                            ["routing.target=0.75"]],
    }
    for name, settings in sweeps.items():
        num = 0
        for seed in (1, 2):
            for index, overrides in enumerate(settings):
                job = root / name / "2000-01-01_00-00-00" / str(num)
                num += 1
                options = parse_overrides(overrides)
                routed = options.get("router", "local_global") != "none"
                keep = float(options.get("routing.target", 0.25)) if routed else None
                all_overrides = [f"+sweep={name}", "experiment=tiny_cpu", *overrides, f"seed={seed}"]
                atomic_write_text(job / ".hydra" / "overrides.yaml", yaml.safe_dump(all_overrides))
                atomic_write_text(job / ".hydra" / "config.yaml",
                                  yaml.safe_dump({"task_name": "train", "sweep_name": name, "seed": seed}))
                if name == "demo_keep_ratio" and index == 3 and seed == 1:  # a crashed job: no metrics.json
                    atomic_write_text(job / "run_state.json", json.dumps(
                        {"status": "failed", "attempts": [{"step": 37, "status": "failed",
                                                           "error": "RuntimeError: demo crash"}]}))
                    continue
                noise = 0.15 * (seed - 1.5) * (1 + index)
                sad = 10.0 + (0 if keep is None else 4.0 * (0.5 - keep) ** 2 + 0.3 * index) + noise
                test = {"sad": sad, "mse": 2.0 + sad / 10, "grad": sad * 0.8, "conn": sad * 1.05}
                log_rows = [{"step": s, "train/loss": 1.0 / (1 + s)} for s in range(0, 100, 20)]
                if keep is not None:
                    argmax = keep * 0.4 * (1 + 0.1 * seed)
                    stats = {"keep_ratio": argmax, "keep_ratio_argmax": argmax, "keep_ratio_expected": keep,
                             "p_global_mean": keep, "p_global_std": 0.05 + 0.01 * seed,
                             "enrichment": 1.4, "enrichment_argmax": 1.4 + 0.1 * seed, "enrichment_expected": 1.2}
                    test.update(stats)
                    for b, f in zip(blocks, (1.2, 1.0, 0.9, 0.9)):
                        test.update({f"{k}/block{b}": v * f for k, v in stats.items()})
                    for step in (20, 40, 60, 80, 100):
                        grow = step / 100
                        log_rows.append({"step": step, "val/sad": sad * (2 - grow),
                                         "val/keep_ratio_argmax": argmax * grow, "val/keep_ratio_expected": keep,
                                         "val/p_global_std": stats["p_global_std"] * grow,
                                         **{f"val/keep_ratio_argmax/block{b}": argmax * grow * f
                                            for b, f in zip(blocks, (1.2, 1.0, 0.9, 0.9))}})
                config = {"sweep_name": name, "task_name": "train", "seed": seed, "data": DEMO_DATA,
                          "model": {"backbone": {"embed_dim": 384, "attn_impl": "sdpa",
                                                 "global_block": {"keep_ratio": keep, "selection": "gumbel",
                                                                  "inference": "argmax"} if routed else None}}}
                summary = {"config": config, "val_untrained": dict(test), "val_final": dict(test), "test": test,
                           "train_seconds": 1.0, "global_step": 100, "best_checkpoint": None}
                if keep is not None:
                    summary["test_rules"] = {"argmax": {**test}, "expected": {**test, "sad": sad - 0.4 * keep}}
                atomic_write_text(job / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
                _write_csv_log(job, log_rows)
    return root


def write_demo_references(root: str | Path) -> tuple[Path, Path]:
    """FABRICATED training-free baselines and a ViTMatte teacher run for demos.

    Returns ``(baselines folder, teacher folder)``: ``<root>/baselines/<name>_<split>/metrics.json``
    as ``eval.py baseline=...`` writes them, ``<root>/teacher`` with ``metrics.json`` and
    ``csv/metrics.csv``. Keep ``root`` apart from the sweep folders (the teacher is a train run).
    """
    root = Path(root)
    for name, sad in (("closed_form", 11.0), ("knn", 13.0), ("lkm", 11.5), ("fill_half", 30.0)):
        for split, shift in (("test", 0.0), ("val", 0.5)):
            payload = {"baseline": name, "checkpoint": None, "data": "synthetic", "split": split, "num_images": 16,
                       "metrics": {"sad": sad + shift, "mse": sad / 3, "grad": sad * 0.9, "conn": sad * 1.02,
                                   "latency_s": 0.5}}
            atomic_write_text(root / "baselines" / f"{name}_{split}" / "metrics.json", json.dumps(payload, indent=2))
    teacher = root / "teacher"
    config = {"task_name": "train", "seed": 42, "data": DEMO_DATA, "model": {"backbone": {"embed_dim": 384, "global_block": None}}}
    metrics = {"sad": 9.5, "mse": 2.9, "grad": 7.6, "conn": 9.9}
    atomic_write_text(teacher / "metrics.json", json.dumps(
        {"config": config, "val_final": {**metrics, "sad": 10.0}, "test": metrics, "global_step": 60}, indent=2))
    _write_csv_log(teacher, [{"step": s, "val/sad": 20.0 - s / 6} for s in (0, 15, 30, 45, 60)])
    return root / "baselines", teacher
