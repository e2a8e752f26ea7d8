"""bf16 inference on CPUs: a capability check and an accuracy guard for ``precision=auto``.

On CPUs with native bf16 arithmetic (AVX-512 BF16 or AMX: ``avx512_bf16`` / ``amx_bf16`` in
``/proc/cpuinfo``, and oneDNN built with bf16), bf16 autocast makes the backbone's matmuls and
the decoder's convolutions faster. Whether the matte stays as good depends on the weights, so
``precision=auto`` (:class:`~mematte.inference.Predictor`) picks bf16 on such a CPU only if
:func:`run_guard` holds for the loaded net:

* the net mattes a few images of the project's synthetic **test split** (small, fixed: the
  first ``num_images`` samples of :class:`~mematte.data.synthetic.SyntheticMattingEvalSet`,
  seed 0) in fp32 and in bf16, through the same predictor settings (preset, tiling, routing);
* SAD, MSE, Grad and Conn (:class:`~mematte.metrics.MattingMetrics`, unknown region, 8-bit
  maps as evaluated) of the bf16 run must each be within ``rtol`` (1 %) of the fp32 run;
* the largest per-pixel |Δα| between the two runs is recorded (not a criterion: one pixel
  near a 0.5 trimap threshold may flip, which the metrics weigh properly).

The verdict is cached per weights, keyed by a hash of the state dict, the net's structure, the
predictor settings, the guard settings, the torch / mematte versions and the CPU's bf16 flags,
in ``$MEMATTE_CACHE/precision/<key>.json`` (default ``~/.cache/mematte``; written atomically),
so the guard runs once per checkpoint and machine kind. Explicit ``precision=bf16`` skips the
guard; ``precision=fp32`` never runs it. ``MEMATTE_AUTO_BF16=0`` turns the bf16 choice of
``auto`` off on CPU (fp32 without a guard run); ``=1`` trusts bf16 without the guard.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mematte.atomic import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from mematte.inference import Predictor

log = logging.getLogger("mematte")

__all__ = [
    "BF16_CPU_FLAGS",
    "GUARD_METRICS",
    "GuardResult",
    "DEFAULT_SETTINGS",
    "GuardSettings",
    "cache_dir",
    "cpu_bf16_supported",
    "cpu_flags",
    "guard_key",
    "resolve_auto_cpu",
    "run_guard",
]

BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of native bf16 arithmetic (either is enough for oneDNN's bf16 kernels)."""
GUARD_METRICS: tuple[str, ...] = ("sad", "mse", "grad", "conn")
GUARD_VERSION = 1  # bump when the guard's procedure changes (invalidates cached verdicts)
AUTO_ENV = "MEMATTE_AUTO_BF16"
CACHE_ENV = "MEMATTE_CACHE"


# --------------------------------------------------------------------------- capability
@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _mkldnn_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is None:  # pragma: no cover - old torch
        return True
    try:
        return bool(probe())
    except RuntimeError:  # pragma: no cover
        return False


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively and torch's oneDNN uses it.

    Needs one of :data:`BF16_CPU_FLAGS` (without them bf16 is emulated and slower than fp32)
    and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``. Where ``/proc/cpuinfo`` is missing,
    oneDNN's own check decides alone.
    """
    flags = cpu_flags()
    if flags and not any(f in flags for f in BF16_CPU_FLAGS):
        return False
    return _mkldnn_bf16()


def _cpu_signature() -> str:
    flags = cpu_flags()
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    return f"{platform.machine()}|{','.join(isa)}|mkldnn_bf16={_mkldnn_bf16()}"


# --------------------------------------------------------------------------- guard
@dataclass(frozen=True)
class GuardSettings:
    """What the guard mattes and how strictly it compares.

    Attributes:
        num_images: first samples of the synthetic test split (seed 0).
        min_size, max_size: their side range in pixels (small: the guard is cheap).
        rtol: largest relative change of each metric (0.01 = 1 %).
        atol: absolute slack per metric (for metrics that are ~0 in fp32).
    """

    num_images: int = 4
    min_size: int = 200
    max_size: int = 320
    rtol: float = 0.01
    atol: float = 0.0


DEFAULT_SETTINGS = GuardSettings()
"""What ``precision=auto`` runs (module attribute: tests shrink it)."""


@dataclass
class GuardResult:
    """The guard's verdict and its evidence.

    Attributes:
        passed: every metric within tolerance (and every alpha finite).
        fp32, bf16: SAD, MSE (×1000), Grad, Conn over the guard images.
        rel_diff: |bf16 − fp32| / |fp32| per metric (0 where both are 0, inf where only fp32 is).
        max_abs_alpha_diff: max |α_bf16 − α_fp32| over every pixel (float alphas).
        images: guard images; sizes: their (H, W).  seconds: guard wall time.
        settings: the :class:`GuardSettings` used.  key: the cache key (see :func:`guard_key`).
        cached: read from the cache rather than computed now.
    """

    passed: bool
    fp32: dict[str, float]
    bf16: dict[str, float]
    rel_diff: dict[str, float]
    max_abs_alpha_diff: float
    images: int
    sizes: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    cached: bool = False

    def summary(self) -> str:
        """One line: verdict, per-metric relative change, max |Δα|."""
        diffs = ", ".join(
            f"{m} {self.fp32[m]:.4g}→{self.bf16[m]:.4g} ({100 * self.rel_diff[m]:+.2f}%)" if math.isfinite(self.rel_diff[m])
            else f"{m} {self.fp32[m]:.4g}→{self.bf16[m]:.4g} (inf)"
            for m in GUARD_METRICS
        )
        rtol = self.settings.get("rtol", float("nan"))
        verdict = "PASS" if self.passed else "FAIL"
        return (f"bf16 guard {verdict} (each metric within {100 * rtol:g}% of fp32 on {self.images} synthetic "
                f"test images): {diffs}; max|Δα| {self.max_abs_alpha_diff:.4g}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GuardResult:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _relative(a: float, b: float, atol: float = 0.0) -> float:
    """|b − a| / |a|, less the slack ``atol``; 0 when equal, inf when a is 0 and b is not."""
    diff = max(abs(b - a) - atol, 0.0)
    if diff == 0.0:
        return 0.0
    return diff / abs(a) if a else math.inf


def guard_samples(settings: GuardSettings) -> list[dict[str, Any]]:
    """The guard's images: the first samples of the synthetic test split (deterministic)."""
    from mematte.data.synthetic import SyntheticMattingEvalSet

    data = SyntheticMattingEvalSet(split="test", num_samples=settings.num_images, seed=0,
                                   min_size=settings.min_size, max_size=settings.max_size)
    return [data[i] for i in range(len(data))]


def run_guard(predictor: Predictor, settings: GuardSettings | None = None) -> GuardResult:
    """Matte the guard images with ``predictor``'s net and settings in fp32 and in bf16.

    The predictor itself is not changed (shallow copies with ``precision`` fp32 / bf16 share
    its net). Passes when each of SAD, MSE, Grad and Conn of the bf16 run is within
    ``settings.rtol`` of the fp32 run (and ``atol``), and every bf16 alpha is finite.
    """
    start = time.perf_counter()  # imports included: torchmetrics alone takes a second or more
    from mematte.metrics import MattingMetrics

    settings = settings or DEFAULT_SETTINGS
    samples = guard_samples(settings)
    runs = {}
    for name in ("fp32", "bf16"):
        runner = copy.copy(predictor)
        runner.precision = name
        runner.memory_budget_gb = None
        runs[name] = runner
    metrics = {name: MattingMetrics(region="unknown") for name in runs}
    max_diff, finite = 0.0, True
    for sample in samples:
        alphas = {}
        for name, runner in runs.items():
            alpha = runner(sample["image"], sample["trimap"][0]).alpha
            alphas[name] = alpha
            metrics[name].update(alpha, sample["alpha"][None], sample["trimap"][None])
        finite = finite and bool(torch.isfinite(alphas["bf16"]).all())
        max_diff = max(max_diff, float((alphas["bf16"] - alphas["fp32"]).abs().max()))
    values = {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}
    rel = {k: _relative(values["fp32"][k], values["bf16"][k], settings.atol) for k in GUARD_METRICS}
    passed = finite and all(rel[k] <= settings.rtol for k in GUARD_METRICS)
    return GuardResult(
        passed=passed, fp32=values["fp32"], bf16=values["bf16"], rel_diff=rel,
        max_abs_alpha_diff=max_diff if finite else math.inf, images=len(samples),
        sizes=[list(s["image"].shape[-2:]) for s in samples], seconds=time.perf_counter() - start,
        settings=asdict(settings),
    )


# --------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """``$MEMATTE_CACHE``, else ``$XDG_CACHE_HOME/mematte``, else ``~/.cache/mematte``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mematte"


def _hash_state_dict(net: torch.nn.Module, digest: Any) -> None:
    for name, tensor in sorted(net.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.view(-1).view(torch.uint8).numpy().data)


def guard_key(predictor: Predictor, settings: GuardSettings | None = None) -> str:
    """Cache key of a guard verdict: weights, structure, predictor settings, guard settings,
    torch / mematte versions and the CPU's ISA (hex sha256)."""
    import mematte

    settings = settings or DEFAULT_SETTINGS
    digest = hashlib.sha256()
    _hash_state_dict(predictor.net, digest)
    context = {
        "guard": GUARD_VERSION,
        "settings": asdict(settings),
        "structure": repr(predictor.net),
        "predictor": [repr(predictor.rules), predictor.tile, predictor.context],
        "torch": torch.__version__,
        "mematte": mematte.__version__,
        "cpu": _cpu_signature(),
    }
    digest.update(json.dumps(context, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cache_file(key: str) -> Path:
    return cache_dir() / "precision" / f"{key}.json"


def load_verdict(key: str) -> GuardResult | None:
    """A cached verdict, or None (missing or unreadable: the guard runs again)."""
    path = _cache_file(key)
    try:
        result = GuardResult.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None
    result.cached = True
    return result


def store_verdict(result: GuardResult) -> Path | None:
    """Write a verdict atomically; a cache that cannot be written only costs a rerun."""
    path = _cache_file(result.key)
    try:
        return atomic_write_text(path, result.to_json())
    except OSError as err:
        log.warning("precision: could not cache the bf16 guard verdict at %s (%s)", path, err)
        return None


# --------------------------------------------------------------------------- auto
def resolve_auto_cpu(predictor: Predictor, settings: GuardSettings | None = None) -> tuple[torch.dtype | None, GuardResult | None]:
    """``precision=auto`` on a CPU: bf16 where the CPU has it and the guard holds, else fp32.

    Returns:
        (torch.bfloat16 or None for fp32, the guard result or None when it did not apply).
    """
    switch = os.environ.get(AUTO_ENV, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        log.info("precision=auto: fp32 on CPU (%s=%s)", AUTO_ENV, switch)
        return None, None
    if not cpu_bf16_supported():
        log.info("precision=auto: fp32 on CPU (no native bf16: none of %s, or oneDNN without bf16)",
                 "/".join(BF16_CPU_FLAGS))
        return None, None
    if switch in ("1", "true", "yes", "on"):
        log.info("precision=auto: bf16 on CPU without the guard (%s=%s)", AUTO_ENV, switch)
        return torch.bfloat16, None
    settings = settings or DEFAULT_SETTINGS
    key = guard_key(predictor, settings)
    result = load_verdict(key)
    if result is None:
        log.info("precision=auto: CPU has native bf16; running the bf16 accuracy guard once for "
                 "these weights (%d synthetic test images, fp32 vs bf16)", settings.num_images)
        result = run_guard(predictor, settings)
        result.key = key
        path = store_verdict(result)
        where = f"cached in {path}" if path else "not cached"
        log.info("precision=auto: %s [%.1f s, %s]", result.summary(), result.seconds, where)
    else:
        log.info("precision=auto: %s [cached verdict %s]", result.summary(), _cache_file(key))
    dtype = torch.bfloat16 if result.passed else None
    log.info("precision=auto: %s on CPU", "bf16" if result.passed else "fp32 (the guard failed)")
    return dtype, result
