"""Constants, small readers and number formatting shared by the report's modules."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mematte.report")

METRICS = ("sad", "mse", "grad", "conn")
METRIC_LABELS = {"sad": "SAD", "mse": "MSE", "grad": "Grad", "conn": "Conn"}
# the inference rules of learned routers (mematte.models.routed_block.INFERENCE_RULES), as
# metrics.json's `test_rules` keys them
RULES = ("argmax", "expected")
# routing statistics of MEMatte runs (mematte.metrics.RoutingStats), mean over the routed
# blocks, and per block as `<stat>/block<i>`
ROUTING_STATS = ("keep_ratio", "keep_ratio_argmax", "keep_ratio_expected", "p_global_mean", "p_global_std",
                 "enrichment", "enrichment_argmax", "enrichment_expected")
BLOCK_KEY = re.compile(r"^(?P<stat>[A-Za-z_]+)/block(?P<block>\d+)$")
BEGIN_MARKER = "<!-- report:begin -->"
END_MARKER = "<!-- report:end -->"
GIB = 1024**3
MIB = 1024**2

# below this magnitude numbers are written in scientific notation (p(global) spreads of
# undecided routers are ~1e-5: 0.0000077 would be unreadable)
SMALL = 1e-3


class ReportError(RuntimeError):
    """A problem with the report's inputs; the message names the path and the fix."""


def read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is missing or unreadable (a crash mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float; None for NaN, inf, bools, None and text that is no number."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``values`` as floats (NaN, inf, bools, text dropped)."""
    out = {}
    for key, value in values.items():
        number = finite_number(value)
        if number is not None:
            out[str(key)] = number
    return out


def undefined_keys(values: Mapping[str, Any]) -> set[str]:
    """Keys of ``values`` logged as NaN / inf (e.g. an enrichment when nothing was kept)."""
    out = set()
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            out.add(str(key))
        elif isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf"):
            out.add(str(key))
    return out


def config_lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def slug(name: str) -> str:
    """A file-name-safe form of a sweep name (``multiruns/2026-01-01_10-00`` → ``multiruns_2026-01-01_10-00``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "runs"


def display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------- numbers
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof 1) of one value over a setting's seeds.

    ``n`` counts the seeds that have the value; ``std`` is None below two (no spread to show).
    """

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not values:
            return cls(None, None, 0)
        mean = math.fsum(values) / len(values)
        if len(values) < 2:
            return cls(mean, None, 1)
        var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return cls(mean, math.sqrt(var), len(values))


def fmt(value: Any) -> str:
    """Numbers with 4 significant digits, no exponent; None as an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if abs(value) < SMALL:
            return _sci(value, 4)
        digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
        return f"{value:.{digits}f}"
    return str(value)


def _decimals(value: float, significant: int) -> int:
    """Decimal places that show ``value`` to ``significant`` digits (0 for large values)."""
    if value == 0 or not math.isfinite(value):
        return 0
    rounded = float(f"{abs(value):.{significant - 1}e}")  # 0.096 to 1 digit is 0.1: one decimal
    return max(0, significant - 1 - int(math.floor(math.log10(rounded))))


def _sci(value: float, significant: int) -> str:
    """``7.7e-5`` (no zero-padded exponent)."""
    mantissa, exponent = f"{value:.{significant - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_sig(value: float | None, significant: int = 2) -> str:
    """``value`` to ``significant`` digits without an exponent (0.00123 → 0.0012, 123.4 → 123);
    below 1e-3 in scientific notation (``7.7e-5``)."""
    if value is None:
        return "—"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) < SMALL:
        return _sci(value, significant)
    return f"{value:.{_decimals(value, significant)}f}"


def fmt_pm(stat: Stat, seeds: int | None = None, compact: bool = False, mean_text: str | None = None) -> str:
    """``mean ± std``; ``mean ±—`` from one seed; ``(k/n)`` when only k of the row's n seeds
    have the value (an enrichment is undefined for a run that kept no token).

    The std gets 2 significant digits (1 when ``compact``), the mean as many decimals as the
    std (at least 2 significant digits of its own): ``0.0460 ± 0.0028``, ``10.64 ± 0.11``;
    means below 1e-3 in scientific notation (``7.7e-5 ± 1.8e-5``).
    ``compact``: no spaces (``0.25±0.01``); ``mean_text``: the mean already formatted.
    """
    if stat.mean is None:
        return "—"
    std_digits = 1 if compact else 2
    small = stat.mean != 0 and abs(stat.mean) < SMALL
    if mean_text is not None:
        mean = mean_text
    elif small:
        mean = _sci(stat.mean, 2)
    elif stat.std:
        mean = f"{stat.mean:.{max(_decimals(stat.std, std_digits), _decimals(stat.mean, 2))}f}"
    else:
        mean = fmt_sig(stat.mean, 2) if compact else fmt(stat.mean)
    sep = "±" if compact else " ± "
    if stat.std is None:
        text = f"{mean}{sep.rstrip()}—"
    else:
        if small and stat.std:
            std = _sci(stat.std, std_digits)
        else:  # fixed point next to a fixed-point mean, however small (0.16645 ± 0.00091)
            std = f"{stat.std:.{_decimals(stat.std, std_digits)}f}" if stat.std else "0"
        text = f"{mean}{sep}{std}"
    if seeds is not None and stat.n < seeds:
        text += f" ({stat.n}/{seeds})"
    return text
