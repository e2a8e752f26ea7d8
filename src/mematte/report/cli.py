"""``python -m mematte.report``: the command line."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mematte.report._common import ReportError, display_path, slug
from mematte.report.references import DEFAULT_BASELINES, DEFAULT_CURVE, DEFAULT_TEACHER
from mematte.report.results import write_report
from mematte.report.runs import DEFAULT_RUNS, collect_runs, default_roots


def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give HEIGHTxWIDTH, e.g. 2048x2048")
    return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mematte.report",
        description="Ablation tables, claims, learning curves, plots and RESULTS.md from sweep runs "
                    "(W&B API or local files).",
    )
    parser.add_argument("--runs", nargs="+", action="extend", metavar="DIR",
                        help="folders searched for training runs at any depth, all reported (default: the "
                        f"named sweeps under {' and '.join(DEFAULT_RUNS)})")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read runs from the W&B API first (needs WANDB_MODE online and `wandb login`)")
    parser.add_argument("--group", action="append", default=[], metavar="G",
                        help="only these sweeps (= W&B groups); repeatable")
    parser.add_argument("--baselines", nargs="+", action="extend", metavar="DIR",
                        help="folders (any depth) or files with training-free baseline metrics.json from "
                        "`eval.py baseline=...`; rows in every table of the same data and split (default: "
                        f"{DEFAULT_BASELINES} when it exists)")
    parser.add_argument("--no-baselines", action="store_true", help="no baseline rows, even from the default folder")
    parser.add_argument("--teacher", metavar="DIR",
                        help="the ViTMatte teacher's train run folder: a reference row and its learning curve "
                        f"(default: {DEFAULT_TEACHER} when it exists)")
    parser.add_argument("--no-teacher", action="store_true", help="no teacher row or curve, even from the default")
    parser.add_argument("--curve", metavar="DIR",
                        help="a longer run of the default MEMatte student, validated often: its routing statistics "
                        f"join the routing curves (default: {DEFAULT_CURVE} when it exists)")
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
    baselines = [] if args.no_baselines else (args.baselines or
                                               [p for p in (Path(DEFAULT_BASELINES),) if p.is_dir()])
    teacher = None if args.no_teacher else (args.teacher or
                                            next((p for p in (Path(DEFAULT_TEACHER),) if p.is_dir()), None))
    curve_run = args.curve or next((p for p in (Path(DEFAULT_CURVE),) if p.is_dir()), None)
    try:
        runs = collect_runs(args.runs, args.wandb, args.group)
        roots = args.runs or default_roots()
        sources = [f"W&B {args.wandb}"] if any(r.source == "wandb" for r in runs) else \
            [f"`{display_path(Path(r))}`" for r in roots]
        outputs = write_report(runs, args.out, args.bench, args.bench_resolution, sources, plots=not args.no_plots,
                               baselines=baselines, teacher=teacher, curve_run=curve_run)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    for name, table in outputs.tables.items():
        done = sum(r.finished for r in table.runs)
        print(f"{name}: {done}/{len(table.runs)} runs finished, {len(table.rows)} settings "
              f"-> {Path(args.out) / 'report' / slug(name)}.md")
    if outputs.claims is not None:
        verdicts = [c.verdict for c in outputs.claims.comparisons if not c.informative]
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        print("claims: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "none")
              + f" -> {Path(args.out) / 'report' / 'claims.md'}")
    print(f"{outputs.results_md} {'updated' if outputs.results_changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
