"""Ablation tables, paper claims, learning curves, plots and ``experiments/RESULTS.md`` from sweep results.

``python -m mematte.report [--runs DIR ...] [--wandb ENTITY/PROJECT --group G] [--baselines DIR ...]
[--teacher DIR] [--bench CSV ...] [--out experiments]``

Where runs come from (the first source that yields runs is used):

1. The W&B API (``--wandb ENTITY/PROJECT``, optionally ``--group`` = sweep name), only when
   W&B is online (``WANDB_MODE`` not ``offline``/``disabled``) and ``wandb.Api()`` answers.
2. Local files under ``--runs``, found by globbing at any depth. Default: the named sweeps
   (``sweep_name`` set by ``+sweep=...``) under ``logs/train/multiruns`` (where conf/sweep puts
   them: ``<sweep_name>_<date>_<time>/<job>/``) and ``logs/sweeps``; with ``--runs``, every run:

   * Hydra job folders: ``metrics.json`` written by :func:`mematte.cli.train` (resolved
     ``config``, ``val_final``, ``test``, optional ``test_rules`` = the test split under each
     inference rule), ``.hydra/overrides.yaml`` (what the job set), ``.hydra/hydra.yaml``
     (config group choices), ``run_state.json`` (why a job stopped), ``eval/*.json``
     (``eval.py`` results) and ``csv/metrics.csv`` (learning curves). A job folder without
     ``metrics.json`` did not finish (crash, kill, still running): it is listed with its
     status, never dropped.
   * Offline W&B runs (``wandb/offline-run-*``) that belong to no job folder, read from
     ``files/wandb-summary.json`` and ``files/config.yaml`` when present (the ``.wandb``
     binary is not parsed).

References (optional; the report runs without them):

* ``--baselines DIR ...`` (default ``logs/ablate/baselines`` when it exists): ``metrics.json``
  of ``eval.py baseline=closed_form|knn|lkm|fill_half data=D split=S``. Each becomes a row of
  every table whose runs were scored on the same data and split.
* ``--teacher DIR`` (default ``logs/ablate/teacher`` when it exists): the ViTMatte teacher's
  train run folder: a reference row (its metrics of the tables' split) and its validation SAD
  curve.

Runs are grouped into ablations by ``sweep_name`` in their config (set by ``+sweep=...``),
else by the multirun folder. Within an ablation, runs that differ only by ``seed`` are one
setting: each value is the mean ± sample std (ddof 1) over the seeds (``seeds`` = n; ``±—``
from a single seed); reruns of the same setting and seed are deduped (the newest finished one
is kept). Each ablation gets a table as ``<out>/report/<sweep>.md`` and ``.csv``
(``<metric>_mean``, ``<metric>_std``, ``n``): the settings, seeds, SAD / MSE / Grad / Conn of the
test split (or the final validation), the SAD under each inference rule (``SAD argmax`` /
``SAD expected``) and the routing statistics when logged (kept share used / under argmax /
under expected, spread of p(global), unknown-region enrichment), each run's own test-time peak
memory and latency, the benchmark's cost at a common resolution joined by architecture
(``bench.py`` CSVs), status and runs; then the reference rows; its notes say which decisions
the metrics were scored with. Under it a per-block routing table (``<sweep>_blocks.csv``), and
a plot of SAD against the kept share.

The paper's claims (:mod:`mematte.report.claims`) are checked against the tables by a stated
rule (``<out>/report/claims.md``, ``.csv``); the learning curves (the teacher's validation SAD
with the baselines' levels, the default MEMatte run's routing statistics per block) are drawn
from the CSV logs. ``<out>/RESULTS.md`` receives everything between the markers
``<!-- report:begin -->`` and ``<!-- report:end -->``; text outside them is hand-written and
kept byte for byte.

Modules: :mod:`~mematte.report.runs` (finding and reading runs, settings, seeds),
:mod:`~mematte.report.references` (baselines, teacher, CSV curves),
:mod:`~mematte.report.benchjoin`, :mod:`~mematte.report.tables` (aggregation, markdown, CSV),
:mod:`~mematte.report.claims`, :mod:`~mematte.report.plots`, :mod:`~mematte.report.results`
(RESULTS.md, ``write_report``, demo data), :mod:`~mematte.report.cli`.
"""

from mematte.report._common import (
    BEGIN_MARKER,
    END_MARKER,
    GIB,
    METRIC_LABELS,
    METRICS,
    MIB,
    ROUTING_STATS,
    RULES,
    ReportError,
    Stat,
    fmt,
    fmt_pm,
    slug,
)
from mematte.report.benchjoin import (
    BenchJoin,
    BenchPoint,
    bench_labels,
    bench_signatures,
    join_bench,
    read_bench_csv,
    run_signature,
)
from mematte.report.claims import (
    PAIR_CLAIMS,
    TREND_CLAIMS,
    VERDICT_RULE,
    Claims,
    Comparison,
    Trend,
    claims_markdown,
    evaluate_claims,
    find_row,
    paired_deltas,
    paired_text,
    verdict,
    write_claims_csv,
)
from mematte.report.cli import build_parser, main
from mematte.report.plots import plot_memory_vs_resolution, plot_routing_curves, plot_sad_vs_keep, plot_teacher_curve
from mematte.report.references import (
    DEFAULT_BASELINES,
    DEFAULT_TEACHER,
    Baseline,
    read_baselines,
    read_curves,
    read_teacher,
)
from mematte.report.results import (
    RESULTS_TEMPLATE,
    Curves,
    ReportOutputs,
    default_bench_csvs,
    replace_marked,
    results_markdown,
    routing_curve_runs,
    update_results_file,
    write_curves,
    write_demo_references,
    write_demo_sweeps,
    write_report,
)
from mematte.report.runs import (
    DEFAULT_RUNS,
    SWEEP_ORDER,
    Run,
    collect_local,
    collect_runs,
    collect_wandb,
    data_name,
    decision_rule,
    dedupe,
    default_roots,
    find_job_dirs,
    group_sweeps,
    is_routed,
    kept_ratio,
    metrics_from_flat,
    parse_overrides,
    read_job,
    read_offline_wandb,
    run_from_wandb,
    run_seed,
    setting_value,
    varied_keys,
)
from mematte.report.tables import (
    BlockTable,
    Table,
    block_markdown,
    block_table,
    build_table,
    eval_markdown,
    read_table_csv,
    table_markdown,
    write_block_csv,
    write_table_csv,
)

__all__ = [
    "BEGIN_MARKER", "DEFAULT_BASELINES", "DEFAULT_RUNS", "DEFAULT_TEACHER", "END_MARKER", "GIB", "METRICS",
    "METRIC_LABELS", "MIB", "PAIR_CLAIMS", "RESULTS_TEMPLATE", "ROUTING_STATS", "RULES", "SWEEP_ORDER", "TREND_CLAIMS",
    "VERDICT_RULE", "Baseline", "BenchJoin", "BenchPoint", "BlockTable", "Claims", "Comparison", "Curves",
    "ReportError", "ReportOutputs", "Run", "Stat", "Table", "Trend", "bench_labels", "bench_signatures",
    "block_markdown", "block_table", "build_parser", "build_table", "claims_markdown", "collect_local",
    "collect_runs", "collect_wandb", "data_name", "decision_rule", "dedupe", "default_bench_csvs", "default_roots",
    "eval_markdown", "evaluate_claims", "find_job_dirs", "find_row", "fmt", "fmt_pm", "group_sweeps", "is_routed",
    "join_bench", "kept_ratio", "main", "metrics_from_flat", "paired_deltas", "paired_text", "parse_overrides", "plot_memory_vs_resolution",
    "plot_routing_curves", "plot_sad_vs_keep", "plot_teacher_curve", "read_baselines", "read_bench_csv",
    "read_curves", "read_job", "read_offline_wandb", "read_table_csv", "read_teacher", "replace_marked",
    "results_markdown", "routing_curve_runs", "run_from_wandb", "run_seed", "run_signature", "setting_value", "slug",
    "table_markdown", "update_results_file", "varied_keys", "verdict", "write_block_csv", "write_claims_csv",
    "write_curves", "write_demo_references", "write_demo_sweeps", "write_report", "write_table_csv",
]
