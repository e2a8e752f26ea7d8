"""Peak-memory and latency benchmark of full-resolution inference (``python bench.py``).

Every (model, resolution) point runs in a **fresh subprocess** (``python -m mematte.bench
--worker``), so one point's allocator state, caches and peak never leak into the next:

* CPU: peak resident memory during the prediction minus the idle baseline of that process
  (torch imported, net built, input in memory). On Linux the kernel's high-water mark is reset
  after setup (``/proc/self/clear_refs``) and read back from ``VmHWM``; elsewhere
  ``ru_maxrss`` is used. An address-space limit (``RLIMIT_AS``) of baseline + budget turns a
  wrong estimate into a clean allocation error instead of the OOM killer.
* CUDA: ``torch.cuda.max_memory_allocated`` over the prediction minus what was allocated before.
* Latency: median wall time of ``repeats`` predictions after ``warmup`` runs (CUDA synchronised).
* Peak over several processes: one fresh process's CPU peak moves with its address-space
  layout (glibc places and reuses freed buffers differently under ASLR: measured, MEMatte-S
  paper-faithful at 1024², 395–517 MiB over thirteen processes; 367 MiB in each of three
  with ASLR off), so a point that runs fast enough (``memory_runs_max_s``) is run again in
  ``memory_runs − 1`` more fresh processes that only measure the peak, and the median is
  reported (``peaks_bytes`` keeps them all).

The parent never starts a point it predicts will not fit: the peak-memory estimate
(:func:`mematte.inference.estimate_peak_bytes`) is checked against the budget, and the
latency, extrapolated from the same model's smaller points, against ``time_limit_s``. Such
points are written as ``skipped`` with the reason. Results go to ``out_dir`` as
``<name>.csv``, ``<name>.md`` (table, ratios to the reference model, log-log slopes) and
``<name>.png`` (memory and latency vs. pixels, log-log); raw per-point records are appended to
``<name>.jsonl`` as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mematte.atomic import atomic_path, atomic_write_text
from mematte.profiling import PeakMemory, read_status_bytes

log = logging.getLogger("mematte")

GIB = 1024**3
MIB = 1024**2
STATUSES = ("ok", "skipped", "oom", "error", "timeout")


# --------------------------------------------------------------------------- records
@dataclass
class PointSpec:
    """One benchmark point, as handed to the worker subprocess.

    Attributes:
        model: model key in the bench config.  net_config: resolved net config (``_target_``s).
        height, width: image size.  device: ``cpu`` / ``cuda``.  precision: Predictor precision.
        tile: decoder tile (None = whole image, as the original code).  context: tile context.
        repeats, warmup: timed and untimed predictions.  max_seconds: stop repeating once the
        timed runs took this long (the median is over the runs done).  threads: torch intra-op
        threads (None = torch's default).  memory_limit_bytes: address-space growth allowed
        after setup (CPU guard; None = none).  seed: input and weight seed.
        memory_only: measure the first prediction's peak and stop (no latency runs).
    """

    model: str
    net_config: dict[str, Any]
    height: int
    width: int
    device: str = "cpu"
    precision: str = "fp32"
    tile: int | None = 512
    context: int = 32
    repeats: int = 3
    warmup: int = 1
    max_seconds: float = 120.0
    threads: int | None = None
    memory_limit_bytes: int | None = None
    seed: int = 0
    memory_only: bool = False


@dataclass
class PointResult:
    """What one point produced (a row of the CSV).

    ``peak_bytes`` is the growth over the process's baseline (weights, input and runtime
    already resident), so it compares with ``estimate_bytes − weights_bytes``; the budget
    check uses the whole estimate. Where the point ran in several fresh processes
    (``memory_runs``), ``peaks_bytes`` holds each one's peak and ``peak_bytes`` is their
    median (the lower middle one of an even count).
    """

    model: str
    height: int
    width: int
    status: str
    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    estimate_bytes: int | None = None
    weights_bytes: int | None = None
    latency_s: float | None = None
    latencies_s: list[float] = field(default_factory=list)
    global_tokens: list[int] = field(default_factory=list)
    tokens: int | None = None
    reason: str = ""
    device: str = "cpu"
    threads: int | None = None
    tile: int | None = None
    peaks_bytes: list[int] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return self.height * self.width


# --------------------------------------------------------------------------- worker
def run_point(spec: PointSpec) -> PointResult:
    """Measure one point in this process (call it in a fresh one: see :func:`measure`)."""
    import torch

    from mematte.checkpoints import build_net
    from mematte.inference import Predictor

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    result = PointResult(spec.model, spec.height, spec.width, "ok", device=spec.device,
                         threads=torch.get_num_threads())
    net = build_net(spec.net_config)
    predictor = Predictor(net, device=spec.device, precision=spec.precision, tile=spec.tile,
                          context=spec.context)
    g = torch.Generator().manual_seed(spec.seed)
    image = torch.randint(0, 256, (3, spec.height, spec.width), dtype=torch.uint8, generator=g)
    # a realistic trimap layout does not matter for the cost (fixed keep ratio); random values
    # exercise all three classes
    trimap = torch.randint(0, 3, (spec.height, spec.width), dtype=torch.uint8, generator=g) * 127
    result.estimate_bytes = predictor.estimate(spec.height, spec.width)["total"]
    cuda = predictor.device.type == "cuda"

    def predict() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        prediction = predictor(image, trimap)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result.global_tokens = [int(r.decision.sum()) for r in prediction.routing]
        result.tokens = math.prod(prediction.routing[0].grid) if prediction.routing else None
        return seconds

    # --- memory: the first prediction, from a settled baseline
    meter = PeakMemory(predictor.device)
    result.baseline_bytes = meter.start()
    if not cuda and spec.memory_limit_bytes is not None:
        vm = read_status_bytes("VmSize")
        if vm is not None:
            # 1 GiB of slack for thread stacks and allocator arenas, which are address
            # space but hardly resident
            limit = vm + spec.memory_limit_bytes + GIB
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        first = predict()
    except (RuntimeError, MemoryError) as err:  # the address-space guard or a real CUDA OOM
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "memory" in text.lower() or isinstance(err, MemoryError):
            result.status, result.reason = "oom", text[:300]
            return result
        raise
    result.peak_bytes = meter.peak_bytes()
    if spec.memory_only:
        return result

    # --- latency: the first run counts as warm-up when warmup ≥ 1, except for slow points
    # (≥ max_seconds / 4), where one-off start-up costs are negligible against the run
    slow = first >= spec.max_seconds / 4
    times = [first] if (spec.warmup < 1 or slow) else []
    for _ in range(0 if slow else max(spec.warmup - 1, 0)):
        predict()
    while len(times) < spec.repeats and sum(times) + first < spec.max_seconds:
        times.append(predict())
    result.latencies_s = times
    result.latency_s = statistics.median(times)
    return result


def _worker_main() -> None:
    """``python -m mematte.bench --worker``: one PointSpec (JSON on stdin) → a PointResult line."""
    spec = PointSpec(**json.loads(sys.stdin.read()))
    result = run_point(spec)
    print("MEMATTE_BENCH_RESULT " + json.dumps(asdict(result)), flush=True)


# --------------------------------------------------------------------------- parent side
def measure_peak_runs(
    spec: PointSpec, result: PointResult, runs: int, max_seconds: float, estimate_bytes: int, timeout_s: float
) -> None:
    """Add the peaks of ``runs − 1`` more fresh processes (peak only) to a measured point and
    report their median, when its latency is at most ``max_seconds``; else (or after a run
    that fails) the peaks measured so far stand."""
    peaks = [result.peak_bytes]
    if runs > 1 and result.latency_s is not None and result.latency_s <= max_seconds:
        again = replace(spec, memory_only=True)
        for _ in range(runs - 1):
            extra = measure(again, estimate_bytes, timeout_s)
            if extra.status != "ok" or extra.peak_bytes is None:
                log.warning("%s: a peak-only run ended %s (%s); the median is over %d run(s)",
                            point_key(spec.model, spec.height, spec.width), extra.status, extra.reason,
                            len(peaks))
                break
            peaks.append(extra.peak_bytes)
    result.peaks_bytes = peaks
    result.peak_bytes = int(statistics.median_low(peaks))


def measure(spec: PointSpec, estimate_bytes: int, timeout_s: float) -> PointResult:
    """Run one point in a fresh Python process and parse its result."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # run the same mematte as this process
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "mematte.bench", "--worker"]
    try:
        proc = subprocess.run(cmd, input=json.dumps(asdict(spec)), capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return PointResult(spec.model, spec.height, spec.width, "timeout", estimate_bytes=estimate_bytes,
                           reason=f"killed after {timeout_s:.0f} s (point_timeout_s)", device=spec.device)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("MEMATTE_BENCH_RESULT "):
            data = json.loads(line.split(" ", 1)[1])
            return PointResult(**data)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    status = "oom" if proc.returncode in (-9, 137) else "error"
    reason = f"worker exit {proc.returncode}: " + " | ".join(tail)
    return PointResult(spec.model, spec.height, spec.width, status, estimate_bytes=estimate_bytes,
                       reason=reason[:500], device=spec.device)


def available_memory_bytes(device: str) -> int:
    """Free memory on the device: ``MemAvailable`` (CPU) or free GPU memory (CUDA)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:  # not Linux: physical memory
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return avail


def predict_latency(history: Sequence[PointResult], pixels: int, default_slope: float = 2.0) -> float | None:
    """Extrapolate a model's latency to ``pixels`` from its measured points (log-log).

    Uses the slope through the two largest measured points (never below 1); with one point,
    ``default_slope`` (2 = quadratic attention, the pessimistic case). None without points.
    """
    done = sorted((r for r in history if r.status == "ok" and r.latency_s), key=lambda r: r.pixels)
    if not done:
        return None
    last = done[-1]
    slope = default_slope
    if len(done) >= 2 and done[-1].pixels > done[-2].pixels:
        a, b = done[-2], done[-1]
        slope = max(1.0, math.log(b.latency_s / a.latency_s) / math.log(b.pixels / a.pixels))
    return last.latency_s * (pixels / last.pixels) ** slope


def loglog_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than 2 distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def model_net_configs(models: DictConfig, base_config: str = "train") -> dict[str, dict[str, Any]]:
    """Resolved net config of each bench model, composed from the config groups.

    Each model lists overrides of ``conf/<base_config>.yaml`` (``backbone=vit_small``,
    ``router=local_global``...), so the benchmark builds exactly what training builds.
    Must run inside a Hydra app (or an initialised compose context).
    """
    from hydra import compose

    configs = {}
    for name, spec in models.items():
        cfg = compose(config_name=base_config, overrides=list(spec.overrides))
        configs[name] = OmegaConf.to_container(cfg.model, resolve=True)
    return configs


def point_key(model: str, height: int, width: int) -> str:
    return f"{model}@{height}x{width}"


def load_records(path: Path, fingerprint: dict[str, Any]) -> dict[str, PointResult]:
    """Measured points of an earlier run with the same settings (``resume``)."""
    records: dict[str, PointResult] = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if data.get("fingerprint") != fingerprint:
            continue
        result = PointResult(**data["result"])
        if result.status == "ok":  # skips and failures are decided again (budget may differ)
            records[point_key(result.model, result.height, result.width)] = result
    return records


def append_record(path: Path, fingerprint: dict[str, Any], result: PointResult) -> None:
    """Append one finished point (one JSON line, flushed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"fingerprint": fingerprint, "result": asdict(result)}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_benchmark(cfg: DictConfig) -> list[PointResult]:
    """The whole benchmark: every model × resolution, skipping what cannot fit; writes reports."""
    from mematte.checkpoints import build_net
    from mematte.inference import auto_tile, estimate_peak_bytes

    device = str(cfg.device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA GPU; run with device=cpu")
    unknown = [m for m in cfg.run_models if m not in cfg.models]
    if unknown:
        raise ValueError(f"run_models {unknown} are not in models ({list(cfg.models)})")
    budget = (
        int(float(cfg.memory_budget_gb) * GIB)
        if cfg.memory_budget_gb is not None
        else int(cfg.budget_fraction * available_memory_bytes(device))
    )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = str(cfg.name)
    net_configs = model_net_configs(cfg.models)
    fingerprint = {
        "device": device,
        "threads": cfg.threads,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "keep_ratio": cfg.keep_ratio,
        "memory_runs": cfg.memory_runs,
        "git": _git_commit(),
    }
    jsonl = out_dir / f"{name}.jsonl"
    done = load_records(jsonl, fingerprint) if cfg.resume else {}
    if not cfg.resume and jsonl.exists():
        jsonl.unlink()
    log.info("memory budget %.2f GiB on %s; %d earlier points reused", budget / GIB, device, len(done))

    results: list[PointResult] = []
    for model in cfg.run_models:
        spec_cfg = cfg.models[model]
        net = build_net(net_configs[model])
        precision = spec_cfg.get("precision") or cfg.precision
        if precision == "auto" and not device.startswith("cuda"):
            precision = "fp32"  # auto's bf16 on CPU hinges on a guard run: bf16 models say bf16
        # activations under autocast (bf16/fp16, or auto on CUDA) are 2 bytes
        half = precision in ("bf16", "fp16") or (precision == "auto" and device.startswith("cuda"))
        dtype_bytes = 2 if half else 4
        model_skip = emulated_bf16_reason(cfg) if device_type == "cpu" and precision == "bf16" else None
        history: list[PointResult] = []
        for height, width in (tuple(r) for r in cfg.resolutions):
            key = point_key(model, height, width)
            tile = spec_cfg.get("tile", cfg.tile)
            context = spec_cfg.get("context", cfg.context)
            if tile == "auto":  # what the Predictor picks without a budget
                tile = done[key].tile if key in done else auto_tile(
                    net, height, width, context=context, dtype_bytes=dtype_bytes, device_type=device_type)
            parts = estimate_peak_bytes(net, height, width, tile=tile, context=context,
                                        dtype_bytes=dtype_bytes, device_type=device_type)
            estimate, weights = parts["total"], parts["weights"]
            if key in done:
                result = done[key]
                # the estimate is the code's prediction, not a measurement: recomputed, so the
                # reports follow changes to it without running the point again
                result.estimate_bytes, result.weights_bytes = estimate, weights
                log.info("%s: reused (%s)", key, result.status)
                history.append(result)
                results.append(result)
                continue
            expected_s = predict_latency(history, height * width)
            if model_skip:
                result = PointResult(model, height, width, "skipped", estimate_bytes=estimate, device=device,
                                     reason=model_skip)
            elif estimate > budget:
                result = PointResult(model, height, width, "skipped", estimate_bytes=estimate, device=device,
                                     reason=f"estimated peak {estimate / GIB:.1f} GiB > budget {budget / GIB:.1f} GiB")
            elif expected_s is not None and expected_s > cfg.time_limit_s:
                result = PointResult(model, height, width, "skipped", estimate_bytes=estimate, device=device,
                                     reason=f"predicted {expected_s:.0f} s > time_limit_s {cfg.time_limit_s:g}")
            else:
                spec = PointSpec(
                    model=model, net_config=net_configs[model], height=height, width=width,
                    device=device, precision=precision, tile=tile, context=context,
                    repeats=cfg.repeats, warmup=cfg.warmup, max_seconds=cfg.max_seconds,
                    threads=cfg.threads, seed=cfg.seed,
                    memory_limit_bytes=None if device.startswith("cuda") else budget,
                )
                log.info("%s: running (estimate %.2f GiB%s)", key, estimate / GIB,
                         f", ~{expected_s:.0f} s" if expected_s else "")
                result = measure(spec, estimate, cfg.point_timeout_s)
                if result.status == "ok":
                    measure_peak_runs(spec, result, int(cfg.memory_runs), float(cfg.memory_runs_max_s),
                                      estimate, cfg.point_timeout_s)
            result.estimate_bytes, result.weights_bytes, result.tile = estimate, weights, tile
            log.info("%s: %s %s", key, result.status, _describe(result))
            append_record(jsonl, fingerprint, result)
            history.append(result)
            results.append(result)
        del net

    startup: dict[str, float] = {}
    if cfg.get("startup") and cfg.startup.model:
        startup = measure_startup(net_configs[str(cfg.startup.model)], Path(cfg.paths.root_dir),
                                  repeats=startup_repeats(cfg))
        log.info("start-up: %s", ", ".join(f"{k} {v:.2f}" for k, v in startup.items()))
    write_reports(results, cfg, out_dir / name, budget, startup)
    append_markdown(out_dir / name, bf16_guard_notes(cfg, net_configs))
    return results


def emulated_bf16_reason(cfg: DictConfig) -> str | None:
    """Why a bf16 model is skipped on this CPU, or None to measure it: without native bf16
    (:func:`mematte.precision.cpu_bf16_supported`) oneDNN emulates it, 9× slower than fp32
    (MEMatte-S at 1024²: 68.7 vs 7.6 s) and with buffers the estimate does not model, which is
    not the case ``precision=bf16`` is for. ``measure_emulated_bf16=true`` measures it anyway."""
    from mematte.precision import BF16_CPU_FLAGS, cpu_bf16_supported

    if cfg.get("measure_emulated_bf16", False) or cpu_bf16_supported():
        return None
    return f"this CPU has no native bf16 ({' / '.join(BF16_CPU_FLAGS)}): emulated, not measured"


def _describe(r: PointResult) -> str:
    if r.status != "ok":
        return r.reason
    return f"peak {_peak_cell(r)} MiB, latency {r.latency_s:.2f} s"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------- start-up
STARTUP_REPEATS = 3


def startup_repeats(cfg: DictConfig) -> int:
    """Fresh processes per start-up command (``startup.repeats``, default :data:`STARTUP_REPEATS`)."""
    return int((cfg.get("startup") or {}).get("repeats", STARTUP_REPEATS))


def measure_startup(
    net_config: dict[str, Any], root: Path, size: int = 512, timeout_s: float = 300,
    repeats: int = STARTUP_REPEATS,
) -> dict[str, float]:
    """Wall seconds of ``predict.py --help`` and of a cold ``predict.py`` run on one image:
    the median of ``repeats`` fresh processes each (on a shared 2-core machine one start
    varied by ±15 %).

    The run reads a checkpoint of ``net_config`` (random weights), a ``size``² PNG and its
    trimap and writes the alpha (cutout off) into a new folder: process start to exit, as a
    user sees it. Each time includes the interpreter and every import. The run
    is fp32: ``precision=auto``'s bf16 guard runs once per weights file on a bf16 CPU (about
    10 s) and is then cached, so it is not a cost of every start.
    """
    import tempfile

    import numpy as np
    from PIL import Image

    from mematte.checkpoints import build_net
    from mematte.checkpoints.native import save_net_checkpoint

    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        save_net_checkpoint(build_net(net_config), net_config, tmp / "net.ckpt")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(tmp / "image.png")
        trimap = np.array([0, 128, 255], dtype=np.uint8)[rng.integers(0, 3, (size, size))]
        Image.fromarray(trimap).save(tmp / "trimap.png")
        for run in range(repeats):
            out = tmp / f"out{run}"  # a new folder each time: an existing alpha would be skipped
            commands = {
                "help_s": [sys.executable, "predict.py", "--help"],
                "first_alpha_s": [
                    sys.executable, "predict.py", f"ckpt_path={tmp / 'net.ckpt'}", f"input={tmp / 'image.png'}",
                    f"trimaps={tmp / 'trimap.png'}", f"out={out}", "cutout=false", "precision=fp32",
                    f"hydra.run.dir={tmp / 'hydra'}",
                ],
            }
            for key, cmd in commands.items():
                start = time.perf_counter()
                proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout_s)
                samples.setdefault(key, []).append(time.perf_counter() - start)
                if proc.returncode:
                    raise RuntimeError(f"{' '.join(cmd[1:3])} failed ({proc.returncode}): {proc.stderr[-500:]}")
            if not (out / "alpha" / "image.png").is_file():
                raise RuntimeError("predict.py wrote no alpha; the start-up measurement is void")
    log.info("start-up runs (s): %s", "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in samples.items()))
    return {key: statistics.median(values) for key, values in samples.items()}


# --------------------------------------------------------------------------- bf16 guard
def bf16_guard_notes(cfg: DictConfig, net_configs: dict[str, dict[str, Any]]) -> str:
    """The bf16 accuracy guard (:func:`mematte.precision.run_guard`) of each bf16 CPU model of
    the run, as a Markdown section: SAD, MSE, Grad and Conn of bf16 vs. fp32 on the synthetic
    test images and max|Δα|. The nets have the timed points' (random) weights, so this checks
    the bf16 kernels and code paths, not a trained checkpoint. ``bf16_guard: false`` skips it.
    """
    if not cfg.get("bf16_guard", True) or not str(cfg.device).startswith("cpu"):
        return ""
    import torch

    from mematte.checkpoints import build_net
    from mematte.inference import Predictor
    from mematte.precision import run_guard

    lines = []
    for model in cfg.run_models:
        spec = cfg.models[model]
        if (spec.get("precision") or cfg.precision) != "bf16":
            continue
        try:
            torch.manual_seed(cfg.seed)  # the weights of the timed points (run_point)
            predictor = Predictor(build_net(net_configs[model]), precision="bf16",
                                  tile=spec.get("tile", cfg.tile), context=spec.get("context", cfg.context))
            result = run_guard(predictor)
            lines.append(f"- {spec.get('label', model)}: {result.summary()} ({result.seconds:.1f} s)")
        except Exception as err:  # a report note must not fail the benchmark
            lines.append(f"- {spec.get('label', model)}: guard failed to run ({type(err).__name__}: {err})")
        log.info("bf16 guard: %s", lines[-1][2:])
    if not lines:
        return ""
    return ("\n## bf16 accuracy guard\n\nbf16 vs. fp32 on the synthetic test images, as `precision=auto` "
            "checks it on a CPU with native bf16 (mematte.precision; random weights here):\n\n"
            + "\n".join(lines) + "\n")


def append_markdown(stem: Path, text: str) -> None:
    """Append ``text`` to ``<stem>.md`` (atomically); nothing for empty text."""
    if text:
        md = stem.with_suffix(".md")
        atomic_write_text(md, (md.read_text() if md.exists() else "") + text)


# --------------------------------------------------------------------------- targets
@dataclass
class TargetResult:
    """One target of the benchmark config checked on this run's measurements."""

    name: str
    measured: float | None
    limit: float
    unit: str
    detail: str = ""

    @property
    def status(self) -> str:
        if self.measured is None:
            return "not measured"
        return "met" if self.measured <= self.limit else "not met"


def _point(results: Sequence[PointResult], model: str, size: Sequence[int]) -> PointResult | None:
    return next((r for r in results if r.model == model and (r.height, r.width) == tuple(size)), None)


def estimate_errors(results: Sequence[PointResult]) -> dict[str, float]:
    """``estimated / measured − 1`` (activations, no weights) of every measured point."""
    return {point_key(r.model, r.height, r.width): estimated_activations(r) / r.peak_bytes - 1
            for r in results if r.status == "ok" and r.peak_bytes and r.estimate_bytes is not None}


def check_targets(
    results: Sequence[PointResult], targets: Sequence[Any], startup: dict[str, float]
) -> list[TargetResult]:
    """Evaluate each configured target (``kind``: memory_ratio, latency_ratio, peak_gib,
    estimate_error, startup_s) on this run's points; ratios need both points measured, a
    memory ratio against a reference skipped for memory uses its estimate (as the table)."""
    checked = []
    for t in targets:
        kind, limit = str(t.kind), float(t.max)
        measured, unit, detail = None, "", ""
        if kind in ("memory_ratio", "latency_ratio"):
            unit = "×"
            ratios = reference_ratios(results, str(t.reference))
            key = (str(t.model), int(t.size[0]), int(t.size[1]))
            if key in ratios:
                mem, lat, estimated = ratios[key]
                measured = mem if kind == "memory_ratio" else lat
                detail = "reference estimated" if estimated and kind == "memory_ratio" else ""
        elif kind == "peak_gib":
            unit = "GiB"
            r = _point(results, str(t.model), t.size)
            if r is not None and r.status == "ok":
                measured = r.peak_bytes / GIB
        elif kind == "estimate_error":
            unit = "|est/peak − 1|"
            errors = estimate_errors(results)
            if errors:
                worst = max(errors, key=lambda k: abs(errors[k]))
                measured, detail = abs(errors[worst]), f"worst {worst}: {errors[worst]:+.1%}"
        elif kind == "startup_s":
            unit = "s"
            measured = startup.get(str(t.what))
        else:
            raise ValueError(f"unknown target kind {kind!r} in the bench config's targets; "
                             "use memory_ratio, latency_ratio, peak_gib, estimate_error or startup_s")
        checked.append(TargetResult(str(t.name), measured, limit, unit, detail))
    return checked


def targets_table(checked: Sequence[TargetResult]) -> str:
    """The targets as markdown: measured value, limit, met or not."""
    lines = ["| target | measured | limit | status | note |", "|---|---:|---:|---|---|"]
    for t in checked:
        value = "" if t.measured is None else f"{t.measured:.3f} {t.unit}"
        lines.append(f"| {t.name} | {value} | ≤ {t.limit:g} {t.unit} | {t.status} | {t.detail} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- reports
def _size(r: PointResult) -> str:
    return f"{r.width}×{r.height}"


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / MIB:,.0f}"


def _peak_cell(r: PointResult) -> str:
    """The peak in MiB, with the range over its fresh processes where there were several."""
    if len(r.peaks_bytes) < 2:
        return _mib(r.peak_bytes)
    return f"{_mib(r.peak_bytes)} ({_mib(min(r.peaks_bytes))}–{_mib(max(r.peaks_bytes))})"


def estimated_activations(r: PointResult) -> int | None:
    """The estimate without the weights: what ``peak_bytes`` (growth over baseline) measures."""
    if r.estimate_bytes is None:
        return None
    return r.estimate_bytes - (r.weights_bytes or 0)


def reference_ratios(
    results: Sequence[PointResult], reference: str
) -> dict[tuple[str, int, int], tuple[float | None, float | None, bool]]:
    """(model, h, w) → (memory ratio, latency ratio, reference memory estimated?) vs ``reference``.

    Where the reference was skipped for memory, its estimate stands in for the memory ratio
    (flagged); a latency ratio needs both measured.
    """
    ref = {(r.height, r.width): r for r in results if r.model == reference}
    ratios = {}
    for r in results:
        base = ref.get((r.height, r.width))
        if r.model == reference or base is None or r.status != "ok":
            continue
        estimated = base.status != "ok"
        base_mem = estimated_activations(base) if estimated else base.peak_bytes
        mem = r.peak_bytes / base_mem if base_mem else None
        lat = r.latency_s / base.latency_s if (not estimated and base.latency_s) else None
        ratios[(r.model, r.height, r.width)] = (mem, lat, estimated)
    return ratios


def memory_slopes(results: Sequence[PointResult], min_pixels: int, max_pixels: int) -> dict[str, float | None]:
    """Per model, log-log slope of measured peak memory vs. pixels within [min, max] pixels."""
    slopes = {}
    for model in dict.fromkeys(r.model for r in results):
        pts = [(r.pixels, r.peak_bytes) for r in results
               if r.model == model and r.status == "ok" and min_pixels <= r.pixels <= max_pixels]
        slopes[model] = loglog_slope(pts)
    return slopes


def markdown_table(results: Sequence[PointResult], cfg: DictConfig, budget: int) -> str:
    """The results as markdown: one row per point, then ratios and slopes."""
    labels = {name: str(spec.get("label", name)) for name, spec in cfg.models.items()}
    ratios = reference_ratios(results, cfg.reference) if cfg.reference else {}
    ref_label = labels.get(cfg.reference, cfg.reference)
    lines = [
        f"Device: {results[0].device if results else cfg.device}; threads: "
        f"{results[0].threads if results and results[0].threads else cfg.threads or 'default'}; "
        f"budget {budget / GIB:.1f} GiB; keep ratio {cfg.keep_ratio}; median of up to "
        f"{cfg.repeats} runs after {cfg.warmup} warm-up (points over {cfg.max_seconds / 4:g} s: the "
        f"first run counts, repeats stop after {cfg.max_seconds:g} s). Peak = growth over the idle "
        "process (weights and input resident) in its first prediction; points up to "
        f"{cfg.memory_runs_max_s:g} s: the median over {cfg.memory_runs} fresh processes (their range in "
        "brackets). Estimated = the pre-run estimate without weights.",
        "",
        f"| model | image | status | decoder tile | peak MiB | estimated MiB | latency s | global tokens / block | "
        f"memory vs. {ref_label} | latency vs. {ref_label} |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        mem_ratio, lat_ratio, estimated = ratios.get((r.model, r.height, r.width), (None, None, False))
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason}"
        tokens = ""
        if r.global_tokens and r.tokens:
            tokens = f"{r.global_tokens[0]:,} of {r.tokens:,}"
        lines.append(
            f"| {labels.get(r.model, r.model)} | {_size(r)} | {status} | {'whole' if r.tile is None else r.tile} | "
            f"{_peak_cell(r)} | "
            f"{_mib(estimated_activations(r))} | {'' if r.latency_s is None else f'{r.latency_s:.2f}'} | {tokens} | "
            f"{'' if mem_ratio is None else f'{mem_ratio:.3f}' + (' (vs. estimate)' if estimated else '')} | "
            f"{'' if lat_ratio is None else f'{lat_ratio:.3f}'} |"
        )
    lo, hi = (int(v) for v in cfg.slope_pixels)
    slopes = memory_slopes(results, lo, hi)
    lines += ["", f"Log-log slope of peak memory vs. pixels over {lo / 1e6:.1f}–{hi / 1e6:.1f} Mpx "
              "(1 = linear):", ""]
    for model, slope in slopes.items():
        lines.append(f"- {labels.get(model, model)}: {'n/a (fewer than 2 points)' if slope is None else f'{slope:.3f}'}")
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[PointResult], path: Path) -> None:
    import csv

    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "height", "width", "pixels", "status", "peak_bytes", "baseline_bytes",
                         "estimate_bytes", "latency_s", "latencies_s", "global_tokens", "tokens",
                         "device", "threads", "reason", "peaks_bytes"])
        for r in results:
            writer.writerow([r.model, r.height, r.width, r.pixels, r.status, r.peak_bytes, r.baseline_bytes,
                             r.estimate_bytes, r.latency_s, " ".join(f"{t:.4f}" for t in r.latencies_s),
                             " ".join(map(str, r.global_tokens)), r.tokens, r.device, r.threads, r.reason,
                             " ".join(map(str, r.peaks_bytes))])


def plot(results: Sequence[PointResult], cfg: DictConfig, path: Path) -> None:
    """Log-log memory and latency vs. pixels; skipped points drawn hollow at their estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {name: str(spec.get("label", name)) for name, spec in cfg.models.items()}
    fig, (ax_mem, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, model in enumerate(dict.fromkeys(r.model for r in results)):
        color = f"C{i}"
        rows = sorted((r for r in results if r.model == model), key=lambda r: r.pixels)
        ok = [r for r in rows if r.status == "ok"]
        ax_mem.plot([r.pixels / 1e6 for r in ok], [r.peak_bytes / GIB for r in ok], "o-", color=color,
                    label=labels.get(model, model))
        est = [r for r in rows if r.status != "ok" and r.estimate_bytes]
        if est:
            ax_mem.plot([r.pixels / 1e6 for r in est], [estimated_activations(r) / GIB for r in est], "o",
                        mfc="none", color=color)
        ax_lat.plot([r.pixels / 1e6 for r in ok], [r.latency_s for r in ok], "o-", color=color,
                    label=labels.get(model, model))
    for ax, ylabel in ((ax_mem, "peak memory (GiB)"), (ax_lat, "latency (s)")):
        if any(len(line.get_xdata()) for line in ax.get_lines()):
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:  # every point skipped: nothing to put on log axes
            ax.text(0.5, 0.5, "no measured points", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("megapixels")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.set_title("peak memory (hollow: estimate of a skipped point)")
    ax_lat.set_title("median latency")
    if ax_mem.get_legend_handles_labels()[0]:
        ax_mem.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_reports(
    results: Sequence[PointResult], cfg: DictConfig, stem: Path, budget: int, startup: dict[str, float] | None = None
) -> None:
    """``<stem>.csv``, ``<stem>.md`` (table, start-up, targets) and ``<stem>.png`` (atomically)."""
    write_csv(results, stem.with_suffix(".csv"))
    text = f"# Benchmark `{stem.name}`\n\n" + _environment_line() + "\n\n" + markdown_table(results, cfg, budget)
    if startup:
        text += (f"\nStart-up (fresh processes, wall seconds, median of {startup_repeats(cfg)}): "
                 + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s" for k, v in startup.items()) + ".\n")
    if cfg.get("targets"):
        text += ("\n## Targets\n\nEach checked on this run's points (ratios of points measured in the same "
                 "run, so shared-CPU contention affects both sides alike).\n\n"
                 + targets_table(check_targets(results, cfg.targets, startup or {})))
    atomic_write_text(stem.with_suffix(".md"), text)
    if results:
        plot(results, cfg, stem.with_suffix(".png"))
    log.info("wrote %s.{csv,md,png}", stem)


def _environment_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"torch {torch.__version__}, CPU {cpu} ({os.cpu_count()} logical cores), GPU {gpu}, "
            f"commit {_git_commit() or 'unknown'}.")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker_main()
    else:
        sys.exit("run the benchmark with `python bench.py` (Hydra); --worker is for its subprocesses")
