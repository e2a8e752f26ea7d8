"""The paper's ablation claims checked against the sweep tables by a stated rule.

Each claim compares two settings of one sweep by their test SAD (mean ± sample std over
seeds, lower is better). Sweeps run every setting with the same seeds, so the comparison is
also shown paired: the per-seed difference ``Δ = SAD(A) − SAD(B)`` over the seeds both sides
have (mean ± std, and how many seeds favour A), which removes what a seed does to every
setting alike. The verdict uses the unpaired rule:

- **holds**: side A's mean SAD is lower and the gap exceeds std(A) + std(B);
- **reversed**: side B's mean SAD is lower by more than std(A) + std(B);
- **does not separate**: otherwise;
- **n/a**: a side is missing or has fewer than 2 seeds.

When the runs were scored under both inference rules (``test_rules``), every claim is judged
under each rule; a side without rescored metrics (fixed top-K, random router, no routing:
decisions that do not depend on the rule) enters with its own test metrics, marked "as run".
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mematte.atomic import atomic_write_text
from mematte.report._common import RULES, Stat, fmt, fmt_pm
from mematte.report.runs import option_value, run_seed, same_value
from mematte.report.tables import Table

VERDICT_RULE = (
    "Verdicts compare test SAD (lower is better; mean ± sample std over seeds): **holds** = A's mean is "
    "lower and the gap exceeds std(A) + std(B); **reversed** = B's mean is lower by more than std(A) + std(B); "
    "**does not separate** = otherwise; **n/a** = a side is missing or has fewer than 2 seeds. A screen on a "
    "few seeds, not a significance test. `rule`: the inference rule of the SAD compared — `argmax` / "
    "`expected` = the test split rescored under that rule (metrics.json test_rules), `as run` = each run's "
    "own test metrics; a side marked (as run) under a rule was not rescored (its decisions do not depend on "
    "the rule: fixed top-K, random router, no routing). `paired Δ`: SAD(A) − SAD(B) seed by seed over the "
    "seeds both sides ran (mean ± std; `k/n A` = seeds where A is lower): every setting trains with the same "
    "seeds, so this removes what a seed does to all settings alike."
)


@dataclass(frozen=True)
class PairClaim:
    """Setting ``a`` beats setting ``b`` (option ``key``) in the first of ``sweeps`` that has both."""

    number: str
    text: str
    sweeps: tuple[str, ...]
    key: str
    a: str
    b: str
    informative: bool = False


@dataclass(frozen=True)
class TrendClaim:
    """SAD falls as option ``key`` (a kept share) rises through ``values`` in ``sweep``."""

    number: str
    text: str
    sweep: str
    key: str
    values: tuple[str, ...]


ROUTERS = ("local", "small", "tiny", "se", "random")
LTRM_VARIANTS = ("conv_no_eca", "eca_no_dwconv", "conv_no_shortcut", "mlp", "zero")
OBJECTIVES = ("fixed", "per_image", "per_layer")
PAIR_CLAIMS: tuple[PairClaim, ...] = (
    *(PairClaim("1", f"the local-global router beats {b}", ("ablation_router",), "router", "local_global", b)
      for b in ROUTERS),
    PairClaim("2", "the LTRM (conv) beats none (zero)", ("ablation_no_ltrm", "ablation_ltrm"), "ltrm", "conv", "zero"),
    *(PairClaim("2", f"conv LTRM vs {b} (informative)", ("ablation_ltrm",), "ltrm", "conv", b, informative=True)
      for b in LTRM_VARIANTS),
    *(PairClaim("3", f"the BATR objective beats {b}", ("ablation_objective",), "routing", "batr", b)
      for b in OBJECTIVES),
    PairClaim("4", "distillation (weight 1.0) beats none (0.0)", ("ablation_distill",), "module.distill_weight",
              "1.0", "0.0"),
)
TREND_CLAIMS: tuple[TrendClaim, ...] = (
    TrendClaim("5", "accuracy rises with the kept share (fixed top-K)", "ablation_topk_keep", "routing.target",
               ("0.1", "0.25", "0.5", "1.0")),
    TrendClaim("5", "accuracy rises with the BATR target", "ablation_keep_ratio", "routing.target",
               ("0.1", "0.25", "0.5", "0.75")),
)


@dataclass
class Comparison:
    """One claim under one rule: both sides' SAD and the verdict."""

    number: str
    claim: str
    sweep: str | None
    rule: str
    a: str
    b: str
    a_stat: Stat | None
    b_stat: Stat | None
    verdict: str
    a_note: str = ""
    b_note: str = ""
    informative: bool = False
    note: str = ""
    # per-seed SAD(A) − SAD(B) over the seeds both sides ran
    paired: list[float] = field(default_factory=list)


@dataclass
class Trend:
    """A kept-share sweep under one rule: SAD (and the kept share used) per value."""

    number: str
    claim: str
    sweep: str
    rule: str
    points: list[tuple[str, Stat | None, Stat | None]]
    monotonic: str
    ends: Comparison


@dataclass
class Claims:
    comparisons: list[Comparison] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)


def verdict(a: Stat | None, b: Stat | None) -> str:
    """The rule of :data:`VERDICT_RULE` on two SAD stats (A should be lower)."""
    if a is None or b is None or a.mean is None or b.mean is None or a.n < 2 or b.n < 2:
        return "n/a"
    margin = (a.std or 0.0) + (b.std or 0.0)
    gap = b.mean - a.mean
    if gap > margin:
        return "holds"
    if -gap > margin:
        return "reversed"
    return "does not separate"


_TRAILING_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def _matches(row: Mapping[str, Any], key: str, value: str) -> bool:
    runs = row.get("_runs") or []
    if not runs:
        return False
    run = runs[0]
    if same_value(option_value(run, key), value):
        return True
    label = run.config.get("sweep_value") if isinstance(run.config, Mapping) else None
    if label is None:
        return False
    if same_value(label, value):
        return True
    number = _TRAILING_NUMBER.search(str(label))  # "distill1.0", "target0.25"
    return number is not None and _is_number(value) and same_value(number.group(0), value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def find_row(table: Table, key: str, value: str) -> tuple[dict[str, Any] | None, str]:
    """The setting row whose option ``key`` (or ``sweep_value``) is ``value``; a note when ambiguous."""
    rows = [r for r in table.rows if _matches(r, key, value)]
    if not rows:
        return None, ""
    best = max(rows, key=lambda r: r["n"])
    note = f"{len(rows)} rows have {key}={value}; the one with most seeds used" if len(rows) > 1 else ""
    return best, note


def _side(row: Mapping[str, Any] | None, rule: str) -> tuple[Stat | None, str]:
    if row is None:
        return None, ""
    stats = row["_stats"]
    if rule != "as run":
        rescored = stats.get(f"{rule}/sad")
        if rescored is not None and rescored.n:
            return rescored, ""
        return stats.get("sad"), "as run"
    return stats.get("sad"), ""


def _per_seed(row: Mapping[str, Any] | None, rule: str) -> dict[str, float]:
    """Seed → test SAD of a setting row's finished runs under ``rule`` (its own where not rescored)."""
    out: dict[str, float] = {}
    for run in (row or {}).get("_used", []):
        seed = run_seed(run)
        value = run.rules.get(rule, {}).get("sad") if rule in RULES else None
        value = run.metrics.get("sad") if value is None else value
        if seed is not None and value is not None:
            out[seed] = float(value)
    return out


def paired_deltas(row_a: Mapping[str, Any] | None, row_b: Mapping[str, Any] | None, rule: str) -> list[float]:
    """``SAD(A) − SAD(B)`` for every seed both rows ran, in seed order."""
    a, b = _per_seed(row_a, rule), _per_seed(row_b, rule)
    return [a[s] - b[s] for s in sorted(set(a) & set(b), key=lambda s: (len(s), s))]


def _short_rule(text: str | None) -> str:
    if not text:
        return "?"
    for word in ("argmax", "expected", "fixed top-K", "no routing"):
        if text.startswith(word):
            return word
    return text.split(" ", 1)[0]


def _rules(rows: Sequence[Mapping[str, Any] | None]) -> list[str]:
    present = [r for r in rows if r is not None]
    rules = [rule for rule in RULES if any((row["_stats"].get(f"{rule}/sad") or Stat(None, None, 0)).n
                                           for row in present)]
    if rules:
        return rules
    used = list(dict.fromkeys(_short_rule(row.get("rule")) for row in present))
    return [f"as run ({' / '.join(used)})" if used else "as run"]


def _rule_key(rule: str) -> str:
    return "as run" if rule.startswith("as run") else rule


def _compare(claim_number: str, text: str, sweep: str | None, table: Table | None, key: str, a: str, b: str,
             informative: bool = False) -> list[Comparison]:
    if table is None:
        return [Comparison(claim_number, text, sweep, "—", a, b, None, None, "n/a", informative=informative,
                           note=f"no {sweep} runs" if sweep else "sweep not run")]
    row_a, note_a = find_row(table, key, a)
    row_b, note_b = find_row(table, key, b)
    notes = [n for n in (note_a, note_b) if n]
    missing = [v for v, r in ((a, row_a), (b, row_b)) if r is None]
    if missing:
        notes.append(f"no {key}={' or '.join(missing)} row")
    out = []
    for rule in _rules([row_a, row_b]):
        stat_a, side_a = _side(row_a, _rule_key(rule))
        stat_b, side_b = _side(row_b, _rule_key(rule))
        result = verdict(stat_a, stat_b)
        if result == "n/a" and not missing:
            few = [v for v, s in ((a, stat_a), (b, stat_b)) if s is None or s.n < 2]
            if few:
                notes_rule = notes + [f"{' and '.join(few)}: fewer than 2 seeds"]
            else:
                notes_rule = notes
        else:
            notes_rule = notes
        out.append(Comparison(claim_number, text, sweep, rule, a, b, stat_a, stat_b, result, side_a, side_b,
                              informative, "; ".join(notes_rule), paired_deltas(row_a, row_b, _rule_key(rule))))
    return out


def evaluate_claims(tables: Mapping[str, Table]) -> Claims:
    """Every claim of :data:`PAIR_CLAIMS` and :data:`TREND_CLAIMS` against ``tables`` (by sweep name)."""
    claims = Claims()
    ltrm_claim_sweep = None  # where claim 2 was judged (its conv-vs-zero is not repeated as informative)
    for claim in PAIR_CLAIMS:  # informative rows follow their claim
        if claim.informative:
            sweep = claim.sweeps[0]
            if sweep not in tables or (claim.b == "zero" and ltrm_claim_sweep == sweep):
                continue
            if find_row(tables[sweep], claim.key, claim.b)[0] is None:
                continue
            claims.comparisons += _compare(claim.number, claim.text, sweep, tables[sweep], claim.key, claim.a,
                                           claim.b, informative=True)
            continue
        sweep = next((s for s in claim.sweeps if s in tables and find_row(tables[s], claim.key, claim.a)[0] is not None
                      and find_row(tables[s], claim.key, claim.b)[0] is not None), None)
        sweep = sweep or next((s for s in claim.sweeps if s in tables), None)
        if claim.key == "ltrm":
            ltrm_claim_sweep = sweep
        claims.comparisons += _compare(claim.number, claim.text, sweep or " / ".join(claim.sweeps),
                                       tables.get(sweep) if sweep else None, claim.key, claim.a, claim.b)
    for trend in TREND_CLAIMS:
        claims.trends += _trend(trend, tables.get(trend.sweep))
    return claims


def _trend(claim: TrendClaim, table: Table | None) -> list[Trend]:
    low, high = claim.values[0], claim.values[-1]
    if table is None:
        ends = Comparison(claim.number, f"{high} beats {low}", claim.sweep, "—", high, low, None, None, "n/a",
                          note=f"no {claim.sweep} runs")
        return [Trend(claim.number, claim.text, claim.sweep, "—", [(v, None, None) for v in claim.values], "n/a", ends)]
    rows = [find_row(table, claim.key, v)[0] for v in claim.values]
    out = []
    for rule in _rules(rows):
        points = []
        for value, row in zip(claim.values, rows):
            stat, _ = _side(row, _rule_key(rule))
            kept_key = f"keep_ratio_{rule}" if rule in RULES else "keep_ratio"
            kept = row["_stats"].get(kept_key) if row is not None else None
            points.append((value, stat, kept))
        means = [(v, s.mean) for v, s, _ in points if s is not None and s.mean is not None]
        if len(means) < 2:
            monotonic = "n/a"
        else:
            rises = [f"{a}→{b}" for (a, x), (b, y) in zip(means, means[1:]) if not y < x]
            monotonic = "yes" if not rises else f"no (SAD does not fall at {', '.join(rises)})"
            skipped = [v for v, s, _ in points if s is None or s.mean is None]
            if skipped:
                monotonic += f"; no {', '.join(skipped)}"
        ends = _compare(claim.number, f"{high} beats {low}", claim.sweep, table, claim.key, high, low)
        ends = next((c for c in ends if c.rule == rule), ends[0])
        out.append(Trend(claim.number, claim.text, claim.sweep, rule, points, monotonic, ends))
    return out


# --------------------------------------------------------------------------- output
def _side_text(label: str, stat: Stat | None, note: str) -> str:
    if stat is None or stat.mean is None:
        return f"{label}: —"
    return f"{label}: {fmt_pm(stat)} (n={stat.n}{', ' + note if note else ''})"


def paired_text(deltas: Sequence[float]) -> str:
    """``−0.031 ± 0.012 (2/2 A)``: mean ± std of the per-seed differences, seeds where A is lower."""
    if not deltas:
        return "—"
    stat = Stat.of(list(deltas))
    wins = sum(d < 0 for d in deltas)
    return f"{fmt_pm(stat)} ({wins}/{len(deltas)} A)"


def claims_markdown(claims: Claims) -> str:
    """The claims table, the kept-share trends and the verdict rule."""
    lines = [VERDICT_RULE, "",
             "| # | claim | sweep | rule | A | B | paired Δ | verdict | note |", "|---|---|---|---|---|---|---|---|---|"]
    for c in claims.comparisons:
        number = f"{c.number} (info)" if c.informative else c.number
        lines.append(f"| {number} | {c.claim} | {c.sweep or '—'} | {c.rule} | {_side_text(c.a, c.a_stat, c.a_note)} | "
                     f"{_side_text(c.b, c.b_stat, c.b_note)} | {paired_text(c.paired)} | **{c.verdict}** | {c.note} |")
    if claims.trends:
        lines += ["", "Kept share vs. accuracy (claim 5): test SAD per value of the swept share, with the share of "
                  "tokens actually kept under the same rule in brackets; \"decreasing\" = the mean SAD falls at "
                  "every step; the last column applies the verdict rule to the largest vs. the smallest share.", "",
                  "| # | claim | sweep | rule | SAD by share (kept) | decreasing in the means | largest vs. smallest |",
                  "|---|---|---|---|---|---|---|"]
        for t in claims.trends:
            points = "; ".join(f"{v}: {fmt_pm(s) if s is not None and s.mean is not None else '—'}"
                               + (f" ({fmt(k.mean)})" if k is not None and k.mean is not None else "")
                               for v, s, k in t.points)
            ends = (f"{t.ends.a} vs {t.ends.b}: **{t.ends.verdict}**, paired Δ {paired_text(t.ends.paired)}"
                    + (f" ({t.ends.note})" if t.ends.note else ""))
            lines.append(f"| {t.number} | {t.claim} | {t.sweep} | {t.rule} | {points} | {t.monotonic} | {ends} |")
    return "\n".join(lines) + "\n"


def write_claims_csv(claims: Claims, path: Path) -> Path:
    """Every comparison (kept-share ends included) with raw means and stds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "claim", "sweep", "rule", "a", "a_sad_mean", "a_sad_std", "a_n", "a_note", "b",
                     "b_sad_mean", "b_sad_std", "b_n", "b_note", "paired_delta_mean", "paired_delta_std",
                     "paired_n", "paired_a_lower", "verdict", "informative", "note"])

    def stat(s: Stat | None) -> list[Any]:
        return ["", "", 0] if s is None else ["" if s.mean is None else s.mean, "" if s.std is None else s.std, s.n]

    rows = list(claims.comparisons) + [t.ends for t in claims.trends]
    for c in rows:
        paired = Stat.of(list(c.paired)) if c.paired else None
        writer.writerow([c.number, c.claim, c.sweep or "", c.rule, c.a, *stat(c.a_stat), c.a_note, c.b,
                         *stat(c.b_stat), c.b_note, *stat(paired), sum(d < 0 for d in c.paired), c.verdict,
                         c.informative, c.note])
    return atomic_write_text(path, buffer.getvalue())
