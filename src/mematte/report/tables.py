"""Ablation tables: runs of a setting (its seeds) aggregated to one row of mean ± std, reference
rows (training-free baselines, the ViTMatte teacher), the per-block routing table, markdown
and CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mematte.atomic import atomic_write_text
from mematte.report._common import (
    BLOCK_KEY,
    METRIC_LABELS,
    METRICS,
    MIB,
    ROUTING_STATS,
    RULES,
    Stat,
    display_path,
    fmt,
    fmt_pm,
    numbers,
)
from mematte.report.benchjoin import BenchPoint, join_bench
from mematte.report.references import Baseline
from mematte.report.runs import (
    Run,
    block_numbers,
    data_name,
    decision_rule,
    dedupe,
    eval_size,
    ignored,
    is_routed,
    run_seed,
    setting_signature,
    setting_value,
    varied_keys,
)

# routing statistics shown in the main table (mean over routed blocks), when any run has them
TABLE_ROUTING = ("keep_ratio_argmax", "keep_ratio_expected", "p_global_std", "enrichment_argmax",
                 "enrichment_expected")
# per-block routing table: these stats when present (else the used kept share of older runs)
BLOCK_STATS = ("keep_ratio_argmax", "keep_ratio_expected", "p_global_std", "enrichment_argmax")
COST = ("peak_mib", "latency_s")
LABELS = {
    **METRIC_LABELS,
    **{f"{rule}/sad": f"SAD {rule}" for rule in RULES},
    "keep_ratio": "kept (used)",
    "keep_ratio_argmax": "kept argmax",
    "keep_ratio_expected": "kept expected",
    "p_global_mean": "p mean",
    "p_global_std": "p std",
    "enrichment": "enrichment (used)",
    "enrichment_argmax": "enrichment argmax",
    "enrichment_expected": "enrichment expected",
    "peak_mib": "peak MiB",
    "latency_s": "latency s",
}
LEGEND = {
    "keep_ratio": "kept (used) = share of tokens routed to global attention by the decisions the run used "
                  "(token-weighted over the split, mean over routed blocks)",
    "keep_ratio_argmax": "kept argmax / kept expected = the share each inference rule keeps: argmax = "
                         "p(global) ≥ 0.5, expected = each image's top round(Σp) tokens",
    "p_global_std": "p std = spread of p(global) over tokens (near 0: an undecided router, the same p everywhere)",
    "enrichment_argmax": "enrichment = share of kept tokens in the trimap's unknown region ÷ unknown share of all "
                         "tokens (1 = random, > 1 = the router found detail; undefined when nothing was kept)",
}


@dataclass
class BlockTable:
    """Per-block routing statistics of a sweep's routed settings (mean ± std over seeds).

    ``rows`` hold ``label``, the setting cells, ``n`` and ``stats[(stat, block)]`` → :class:`Stat`
    for every routing statistic logged per block; ``shown`` are the stats a markdown cell lists.
    """

    shown: list[str]
    all_stats: list[str]
    blocks: list[int]
    setting_cols: list[tuple[str, str]]
    rows: list[dict[str, Any]]


@dataclass
class Table:
    """One ablation: a row per setting (its seeds aggregated), then reference rows.

    ``columns`` are ``(key, label)`` pairs. Each row holds raw values by key: for a numeric
    column ``key`` the mean, ``key_std`` the sample std (None from one seed), ``key_n`` how
    many seeds had it, and ``_stats[key]`` the :class:`Stat`; ``n`` = seeds aggregated,
    ``seeds`` their values, ``_runs`` the row's runs (unfinished included).
    """

    sweep: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    notes: list[str]
    runs: list[Run]
    setting_keys: list[str]
    references: list[dict[str, Any]] = field(default_factory=list)
    blocks: BlockTable | None = None
    stat_keys: list[str] = field(default_factory=list)

    @property
    def data_split(self) -> tuple[str | None, str | None]:
        """The dataset and split every reported run was scored on (None where they differ or are unknown)."""
        return _data_split([r for row in self.rows for r in row["_used"]])


def _data_split(runs: Sequence[Run]) -> tuple[str | None, str | None]:
    splits = {r.split.split(" ", 1)[0] for r in runs if r.split}
    names = {data_name(r) for r in runs}
    return (names.pop() if len(names) == 1 else None), (splits.pop() if len(splits) == 1 else None)


def compact_names(names: Sequence[str]) -> str:
    """``a/s/0, a/s/7`` → ``a/s/{0,7}``: job folders of one sweep folder together."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parent, sep, leaf = name.rpartition("/")
        groups.setdefault(parent if sep else "", []).append(leaf)
    parts = []
    for parent, leaves in groups.items():
        inner = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        parts.append(f"{parent}/{inner}" if parent else ", ".join(leaves))
    return "; ".join(parts)


def _setting_cell(runs: Sequence[Run], column: str) -> str:
    """A setting column's value: a varied key's value, the run name(s), or all overrides."""
    key = column.split(":", 1)[1]
    run = runs[0]
    if key == "run":
        return compact_names([r.name for r in runs])
    if key == "overrides":
        shown = [f"{k}={v}" for k, v in run.overrides.items() if not ignored(k)]
        return " ".join(shown) or compact_names([r.name for r in runs])
    return setting_value(run, key)


def row_label(row: Mapping[str, Any], table: Table) -> str:
    cells = [str(row.get(k, "")) for k, _ in table.columns if k.startswith("setting:")]
    return ", ".join(c for c in cells if c) or str(row.get("run", ""))


def group_settings(runs: Sequence[Run], keys: Sequence[str]) -> list[list[Run]]:
    """Runs that differ only by seed, together; groups in launch order of their first run."""
    groups: dict[Any, list[Run]] = {}
    for run in runs:
        if run.overrides:
            key: Any = ("overrides", setting_signature(run))
        elif keys:
            key = ("config", tuple(setting_value(run, k) for k in keys))
        else:
            key = ("name", run.name)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _status(runs: Sequence[Run]) -> str:
    done = [r for r in runs if r.finished]
    if len(done) == len(runs):
        return "ok"
    parts = [f"{len(done)} of {len(runs)} ok"] if done else []
    for run in runs:
        if not run.finished:
            seed = run_seed(run)
            prefix = f"seed {seed}: " if len(runs) > 1 and seed is not None else ""
            parts.append(prefix + run.status)
    return "; ".join(parts)


def _present(runs: Sequence[Run], key: str) -> bool:
    """Any run logged ``key`` (NaN included: shown as —, "undefined", rather than left out)."""
    return any(key in r.metrics or key in r.undefined for r in runs)


def build_table(sweep: str, runs: Sequence[Run], bench: Sequence[BenchPoint] = (),
                bench_resolution: tuple[int, int] | None = None, baselines: Sequence[Baseline] = (),
                teacher: Run | None = None) -> Table:
    """The ablation table of one sweep (see the package docstring for the columns).

    Args:
        sweep: its name.
        runs: its runs (reruns of a setting and seed are deduped, see :func:`dedupe`).
        bench: benchmark points to join by architecture.
        bench_resolution: (height, width) of the benchmark columns.
        baselines: training-free baselines; those of the runs' data and split become rows.
        teacher: the ViTMatte teacher run; its metrics of the runs' split become a row.
    """
    runs, notes = dedupe(runs)
    keys = varied_keys(runs)
    groups = group_settings(runs, keys)
    if keys:
        setting_cols = [(f"setting:{k}", k) for k in keys]
    elif len(groups) == 1:  # a one-setting sweep: show what it set
        setting_cols = [("setting:overrides", "setting")]
    else:
        setting_cols = [("setting:run", "run")]
    join = join_bench(runs, bench, bench_resolution) if bench else None
    res = f" @ {join.resolution[1]}×{join.resolution[0]}" if join and join.resolution else ""

    rule_keys = [f"{rule}/sad" for rule in RULES if any(rule in r.rules for r in runs)]
    routing = [k for k in TABLE_ROUTING if _present(runs, k)]
    own_cost = [c for c in COST if _present(runs, c)]
    columns = setting_cols + [("n", "seeds")] + [(m, METRIC_LABELS[m]) for m in METRICS]
    columns += [(k, LABELS[k]) for k in rule_keys] + [("keep_ratio", LABELS["keep_ratio"])]
    columns += [(k, LABELS[k]) for k in routing] + [(c, LABELS[c]) for c in own_cost]
    if join and join.models:
        columns += [("bench_peak_mib", f"bench peak MiB{res}"), ("bench_latency_s", f"bench latency s{res}")]
    elif not own_cost:
        columns += [("bench_peak_mib", "peak MiB"), ("bench_latency_s", "latency s")]
    columns += [("split", "metrics of"), ("status", "status"), ("run", "runs")]
    # every aggregated value (the CSV has them all; markdown shows the columns above)
    stat_keys = list(METRICS) + [f"{rule}/{m}" for rule in RULES if any(rule in r.rules for r in runs)
                                 for m in METRICS]
    stat_keys += [k for k in ROUTING_STATS if k == "keep_ratio" or _present(runs, k)] + own_cost

    rows = []
    for group in groups:
        done = [r for r in group if r.finished]
        used = done or [r for r in group if r.metrics]  # partial metrics only when no seed finished
        row: dict[str, Any] = {key: _setting_cell(group, key) for key, _ in setting_cols}
        row.update(kind="setting", _runs=group, _used=used, n=len(used),
                   seeds=[s for s in (run_seed(r) for r in used) if s is not None])
        stats: dict[str, Stat] = {}
        for key in stat_keys:
            rule, sep, metric = key.partition("/")
            if sep and rule in RULES:
                stats[key] = Stat.of([r.rules.get(rule, {}).get(metric) for r in used])
            else:
                stats[key] = Stat.of([r.metrics.get(key) for r in used])
        first = (used or group)[0]
        row["routed"] = is_routed(first)
        if row["routed"] is False and used:
            stats["keep_ratio"] = Stat(1.0, None, len(used))
        row["_stats"] = stats
        for key, stat in stats.items():
            row[key], row[f"{key}_std"], row[f"{key}_n"] = stat.mean, stat.std, stat.n
        row["rule"] = decision_rule(first)
        point = join.point(first) if join else None
        row["bench_model"] = join.models.get(id(first)) if join else None
        row["bench_resolution"] = point.resolution if point else None
        ok = point is not None and point.status == "ok"
        row["bench_peak_mib"] = point.peak_bytes / MIB if ok and point.peak_bytes is not None else None
        row["bench_latency_s"] = point.latency_s if ok else None
        if point is not None and not ok:
            row["bench_status"] = f"{point.status}: {point.reason}"
        row["split"] = "/".join(dict.fromkeys(r.split for r in used if r.split))
        row["status"] = _status(group)
        row["run"] = compact_names([r.name for r in group])
        row["source"] = "/".join(dict.fromkeys(r.source for r in group))
        rows.append(row)

    table = Table(sweep=sweep, columns=columns, rows=rows, notes=notes, runs=list(runs), setting_keys=keys,
                  stat_keys=stat_keys)
    for row in rows:
        row["label"] = row_label(row, table)
    _add_notes(table, join, res, bench, own_cost, rule_keys, routing)
    table.references, ref_notes = reference_rows(table, baselines, teacher)
    table.notes += ref_notes
    table.blocks = block_table(table)
    return table


def _add_notes(table: Table, join: Any, res: str, bench: Sequence[BenchPoint], own_cost: Sequence[str],
               rule_keys: Sequence[str], routing: Sequence[str]) -> None:
    runs, rows, notes = table.runs, table.rows, table.notes
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        notes.insert(0, f"{len(unfinished)} of {len(runs)} runs did not finish (status column); their "
                        "metrics are missing or partial")
    seeds = [row["n"] for row in rows]
    notes.append("one row per setting: mean ± sample std (ddof 1) over its seeds (`seeds` = n); `±—` = a single "
                 "seed, no spread to show" + ("; `(k/n)` = only k of the n seeds have the value" if any(
                     0 < row["_stats"][k].n < row["n"] for row in rows for k in row["_stats"]) else ""))
    if seeds and max(seeds) < 2:
        notes.append("every setting has a single seed: differences between rows carry no error bar")
    # which decisions the SAD/MSE/Grad/Conn columns were scored with
    by_rule: dict[str, list[str]] = {}
    for row in rows:
        by_rule.setdefault(row["rule"] or "unknown (no routing config in the run)", []).append(row["label"])
    if len(by_rule) == 1:
        notes.append(f"SAD / MSE / Grad / Conn / kept (used): decisions each run used at test time — {next(iter(by_rule))}")
    elif by_rule:
        parts = [f"{rule} for {', '.join(labels)}" for rule, labels in by_rule.items()]
        notes.append("SAD / MSE / Grad / Conn / kept (used): decisions each run used at test time — " + "; ".join(parts))
    if rule_keys:
        notes.append("SAD argmax / SAD expected: the same test split scored again under each inference rule "
                     "(metrics.json test_rules; learned routers only, — for the others)")
    for key in ("keep_ratio", *routing):
        if key in LEGEND:
            notes.append(LEGEND[key])
    if any(r["split"].startswith("val") for r in rows):
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


# --------------------------------------------------------------------------- references
def _reference_row(table: Table, label: str, metrics: Mapping[str, float], status: str, split: str, where: str,
                   n: int | None, routed: bool | None) -> dict[str, Any]:
    setting_keys = [k for k, _ in table.columns if k.startswith("setting:")]
    row: dict[str, Any] = {k: "" for k in setting_keys}
    if setting_keys:
        row[setting_keys[0]] = label
    stats = {k: Stat.of([metrics[k]]) for k in table.stat_keys if "/" not in k and k in metrics}
    if routed is False:
        stats["keep_ratio"] = Stat(1.0, None, 1)
    row.update(kind="reference", label=label, n=n, seeds=[], _runs=[], _used=[], _stats=stats, routed=routed,
               single=True, split=split, status=status, run=where, rule=None, source="reference")
    for key, stat in stats.items():
        row[key], row[f"{key}_std"], row[f"{key}_n"] = stat.mean, None, 1
    return row


def reference_rows(table: Table, baselines: Sequence[Baseline], teacher: Run | None) -> tuple[list[dict], list[str]]:
    """Rows of the training-free baselines scored on the table's data and split, and of the teacher."""
    data, split = table.data_split
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if not table.rows or split is None:
        if baselines or teacher is not None:
            notes.append("reference rows left out: the runs have no metrics of one common split")
        return rows, notes
    runs = [r for row in table.rows for r in row["_used"]]
    sizes = {s for s in (eval_size(r, split) for r in runs) if s is not None}
    size = sizes.pop() if len(sizes) == 1 else None
    if baselines:
        if data is None:
            notes.append("training-free baselines left out: the runs' dataset is unknown (or mixed)")
        matched = [b for b in baselines if b.split == split and b.data == data] if data else []
        for base in matched:
            label = base.label
            if base.num_images is not None and size is not None and base.num_images != size:
                label += " †"
                notes.append(f"† {base.label} scored {base.num_images} {split} images, these runs {size}: not the "
                             "same images, compare with care (run eval.py with the sweep's data options)")
            rows.append(_reference_row(table, label, base.metrics, "ok", split, display_path(base.path), None, None))
        if data and not matched:
            found = sorted({f"{b.data}/{b.split}" for b in baselines})
            notes.append(f"no training-free baseline scored on {data}/{split} (found: {', '.join(found)})")
        elif matched:
            notes.append("training-free rows: eval.py baseline=… on the same data and split (one deterministic "
                         "evaluation each, no seeds)")
    if teacher is not None:
        teacher_data = data_name(teacher)
        metrics = teacher.splits.get(split)
        where = display_path(teacher.path) if teacher.path is not None else teacher.name
        if data and teacher_data and teacher_data != data:
            notes.append(f"ViTMatte teacher ({where}) left out: trained on {teacher_data}, these runs on {data}")
        elif not metrics:
            notes.append(f"ViTMatte teacher ({where}) has no {split} metrics ({teacher.status}"
                         + ("; trained with test=false?" if split == "test" and teacher.finished else "") + ")")
        else:
            seed = run_seed(teacher)
            rows.append(_reference_row(table, "ViTMatte teacher", metrics, "ok" if teacher.finished else teacher.status,
                                       split, where, 1, is_routed(teacher) if is_routed(teacher) is not None
                                       else False))
            notes.append("ViTMatte teacher: the trained ViTMatte every student starts from and is distilled from"
                         + (f" (one run, seed {seed})" if seed is not None else " (one run)"))
    return rows, notes


# --------------------------------------------------------------------------- per-block table
def block_table(table: Table) -> BlockTable | None:
    """Per-block routing statistics of the routed settings (None when no run logged any)."""
    runs = [r for row in table.rows for r in row["_used"]]
    keys = {k for r in runs for k in (*r.metrics, *r.undefined) if BLOCK_KEY.match(k)}
    blocks = block_numbers(keys)
    if not blocks:
        return None
    present = {BLOCK_KEY.match(k).group("stat") for k in keys}
    shown = [s for s in BLOCK_STATS if s in present] or [s for s in ("keep_ratio",) if s in present]
    all_stats = [s for s in ROUTING_STATS if s in present] + sorted(present - set(ROUTING_STATS))
    setting_cols = [(k, label) for k, label in table.columns if k.startswith("setting:")]
    rows = []
    for row in table.rows:
        used = row["_used"]
        if not used or not any(BLOCK_KEY.match(k) for r in used for k in (*r.metrics, *r.undefined)):
            continue
        stats = {(s, b): Stat.of([r.metrics.get(f"{s}/block{b}") for r in used]) for s in all_stats for b in blocks}
        rows.append({**{k: row[k] for k, _ in setting_cols}, "label": row["label"], "n": row["n"], "stats": stats})
    return BlockTable(shown=shown, all_stats=all_stats, blocks=blocks, setting_cols=setting_cols, rows=rows) if rows else None


def block_markdown(blocks: BlockTable) -> str:
    """The per-block table: a column per block, each cell the shown stats (mean±std over seeds)."""
    legend = " / ".join(LABELS.get(s, s) for s in blocks.shown)
    lines = [f"Per-block routing (each cell: {legend}; mean±std over seeds, ±— = one seed):", "",
             "| " + " | ".join([label for _, label in blocks.setting_cols] + ["seeds"]
                               + [f"block {b}" for b in blocks.blocks]) + " |",
             "|" + "|".join(["---"] * len(blocks.setting_cols) + ["---:"] * (1 + len(blocks.blocks))) + "|"]
    for row in blocks.rows:
        cells = [_esc(str(row[k])) for k, _ in blocks.setting_cols] + [str(row["n"])]
        for b in blocks.blocks:
            cells.append(" / ".join(fmt_pm(row["stats"][(s, b)], row["n"], compact=True) for s in blocks.shown))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_block_csv(blocks: BlockTable, path: Path) -> Path:
    """The per-block statistics in long form: one line per setting and block, ``<stat>_mean/_std/_n``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    settings = [k.split(":", 1)[1] for k, _ in blocks.setting_cols]
    writer.writerow(settings + ["n", "block"] + [f"{s}_{x}" for s in blocks.all_stats for x in ("mean", "std", "n")])
    for row in blocks.rows:
        for b in blocks.blocks:
            values: list[Any] = [row[k] for k, _ in blocks.setting_cols] + [row["n"], b]
            for s in blocks.all_stats:
                stat = row["stats"][(s, b)]
                values += [_csv(stat.mean), _csv(stat.std), stat.n]
            writer.writerow(values)
    return atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------- markdown / CSV
def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _csv(value: Any) -> Any:
    return "" if value is None else value


def _cell(table: Table, row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "n":
        return "—" if value is None else str(value)
    if key == "keep_ratio" and row.get("routed") is False and row["_stats"].get("keep_ratio"):
        return "1 (no routing)"
    stat = row.get("_stats", {}).get(key)
    if key in table.stat_keys or stat is not None:
        if stat is None or stat.mean is None:
            return "—"
        mean = None
        if key == "peak_mib":
            mean = f"{stat.mean:,.0f}" if stat.mean >= 10 else f"{stat.mean:.2g}"
        if row.get("single"):
            return mean or fmt(stat.mean)
        return fmt_pm(stat, row.get("n"), mean_text=mean)
    if key in ("bench_peak_mib", "bench_latency_s") and value is None and row.get("bench_status"):
        return row["bench_status"].split(":", 1)[0]
    if key == "bench_peak_mib" and value is not None:
        text = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
    else:
        text = fmt(value)
    if key.startswith("bench_") and value is not None:
        if "@" not in dict(table.columns)[key] and row.get("bench_resolution"):
            text += f" ({row['bench_resolution']})"  # no common resolution: say which
    return text


def table_markdown(table: Table, blocks: bool = True) -> str:
    """The table as GitHub markdown (setting rows, then reference rows in italics), its notes,
    the per-block routing table and the ``eval.py`` results next to the runs."""
    numeric = set(table.stat_keys) | {"n", "bench_peak_mib", "bench_latency_s"}
    lines = ["| " + " | ".join(_esc(label) for _, label in table.columns) + " |",
             "|" + "|".join("---:" if k in numeric else "---" for k, _ in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_esc(_cell(table, row, k)) for k, _ in table.columns) + " |")
    for row in table.references:
        cells = [_esc(_cell(table, row, k)) for k, _ in table.columns]
        cells = [f"*{c}*" if k.startswith("setting:") and c else c for (k, _), c in zip(table.columns, cells)]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if table.notes:
        text += "\n" + "\n".join(f"- {_esc(n)}" for n in table.notes) + "\n"
    if blocks and table.blocks is not None:
        text += "\n" + block_markdown(table.blocks)
    evals = eval_markdown(table)
    if evals:
        text += "\n" + evals
    return text


def eval_markdown(table: Table) -> str:
    """Full-resolution ``eval.py`` results stored next to the runs (``<run>/eval/*.json``)."""
    lines = []
    for row in table.rows:
        for run in row["_runs"]:
            seed = run_seed(run)
            label = row["label"] + (f" (seed {seed})" if seed is not None and len(row["_runs"]) > 1 else "")
            for name, payload in run.evals.items():
                metrics = numbers(payload.get("metrics") or {})
                per_image = (payload.get("seconds") / payload["num_images"]
                             if payload.get("seconds") and payload.get("num_images") else None)
                lines.append(f"| {_esc(label)} | {name} | " + " | ".join(fmt(metrics.get(m)) for m in METRICS)
                             + f" | {fmt(metrics.get('keep_ratio'))} | {fmt(per_image)} |")
    if not lines:
        return ""
    head = ["eval.py results (full resolution):", "",
            "| run | eval | SAD | MSE | Grad | Conn | kept | s / image |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(head + lines) + "\n"


def write_table_csv(table: Table, path: Path) -> Path:
    """Raw values (full precision) of a table, one line per setting then per reference, written
    atomically: ``<metric>_mean``, ``<metric>_std`` (empty from one seed), ``n`` (seeds)."""
    shown = [k for k, _ in table.columns]
    stats = [k for k in shown if k in table.stat_keys] + [k for k in table.stat_keys if k not in shown]
    header: list[str] = []
    for key in shown:
        if key in table.stat_keys:
            header += [f"{key}_mean", f"{key}_std"]
        elif key.startswith("setting:"):
            header.append(key.split(":", 1)[1])
        else:
            header.append(key)
    extra = [k for k in stats if k not in shown]
    for key in extra:
        header += [f"{key}_mean", f"{key}_std"]
    header += ["seeds", "routed", "rule", "bench_model", "bench_resolution", "bench_status", "source", "kind"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in [*table.rows, *table.references]:
        values: list[Any] = []
        for key in shown + extra:
            if key in table.stat_keys:
                values += [_csv(row.get(key)), _csv(row.get(f"{key}_std"))]
            else:
                values.append(_csv(row.get(key)))
        values += [";".join(row.get("seeds") or []), _csv(row.get("routed")), _csv(row.get("rule"))]
        values += [_csv(row.get(k)) for k in ("bench_model", "bench_resolution", "bench_status", "source", "kind")]
        writer.writerow(values)
    return atomic_write_text(path, buffer.getvalue())


def read_table_csv(path: str | Path) -> list[dict[str, str]]:
    """A table CSV back as dicts (strings), e.g. to compare reports."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


__all__ = ["BlockTable", "Table", "block_markdown", "block_table", "build_table", "compact_names", "eval_markdown",
           "group_settings", "read_table_csv", "reference_rows", "table_markdown",
           "write_block_csv", "write_table_csv"]
