#!/usr/bin/env bash
# GPU evidence in one run (issue 18): the CUDA tests, the CUDA memory/latency benchmark and the
# training throughput, on one GPU within GPU_CHECK_BUDGET_S (450 s by default: < 8 minutes,
# set-up and the kill grace of a timed-out step included), everything written under OUT_DIR.
#
#   bash experiments/gpu_check.sh [OUT_DIR]          # or: make gpu-check [GPU_CHECK_OUT=DIR]
#
# OUT_DIR: $OUT when set (the device tool's output folder), else gpu_check_out/. It receives
#   summary.md             every step's status, exit code and time; the figures below; the tail
#                          of each failed step's log
#   junit_cuda.xml         pytest -m cuda (tests/test_cuda.py), with recorded figures
#   cuda_figures.jsonl     mixed-precision figures of the CUDA tests (max|Δα|, SAD change, ...)
#   bench_cuda.{csv,md,png}  python bench.py device=cuda: MEMatte-S, our ViTMatte-S and the
#                          paper-faithful ViTMatte-S, bf16 and fp32, 1024² … 4872×6016
#   train_throughput.json  200 steps of MEMatte-S (distilled from a random-init ViT-S ViTMatte
#                          teacher) and of ViTMatte-S: images/s and peak CUDA memory
#   logs/<step>.log        one log per step; when OUT_DIR is $OUT (the device tool returns at most
#                          8 files) they are kept in logs.tar.gz instead, re-packed after each step
# summary.md and logs.tar.gz are rewritten after every step, so a run stopped from outside still
# leaves what it had done.
# Steps and their time caps: setup 240 s (seconds when linking), env 60 s (stops here, exit 2,
# without a CUDA GPU), tests 150 s, train 150 s, bench what is left (≤ 300 s; 40 s are kept for
# its tables when it is cut short). Every step runs under `timeout`, within the budget; a failed
# or timed-out step does not stop the others; the exit code is 0 only if every step passed.
#
# Python (step setup; an existing .venv that imports everything is reused):
#   link  when the machine's python3 (PYTHON) already has a torch that sees the GPU (the lent GPU
#         machines: CUDA torch installed, no package registry reachable): .venv is made from it
#         with its site-packages linked in, the wheels under GPU_CHECK_WHEELS are installed into
#         it, and src/ is put on its path as `pip install -e .` would. Make those wheels where pip
#         reaches a registry, with `bash experiments/gpu_check.sh --fetch-wheels`, and carry them.
#   make  otherwise, when a registry answers: `make setup` (plain pip, the Makefile's torch pins).
# GPU_CHECK_SETUP=link|make forces one.
#
# Other entry points: --help, --fetch-wheels [DIR], --print-bench-args (the benchmark's
# overrides, one per line), --print-helper (the Python helper the steps use).
#
# Knobs (environment): GPU_CHECK_BUDGET_S (450), GPU_CHECK_STEPS ("tests train bench"),
# GPU_CHECK_PYTHON (use this interpreter as it is: no set-up), GPU_CHECK_VENV (.venv),
# GPU_CHECK_SETUP (auto | link | make), PYTHON (base interpreter, python3),
# GPU_CHECK_WHEELS (logs/gpu_check/wheels), GPU_CHECK_WORK (logs/gpu_check: scratch runs),
# GPU_CHECK_TRAIN_STEPS (200), GPU_CHECK_TRAIN_BATCH (8), GPU_CHECK_TRAIN_WORKERS (auto),
# GPU_CHECK_BENCH_EXTRA (more bench.py overrides), GPU_CHECK_PACK (1: pack logs; default: only
# when OUT_DIR is $OUT).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
cd "$REPO" || exit 1

: "${GPU_CHECK_BUDGET_S:=450}"
: "${GPU_CHECK_STEPS:=tests train bench}"
: "${GPU_CHECK_VENV:=.venv}"
: "${GPU_CHECK_SETUP:=auto}"
: "${GPU_CHECK_WHEELS:=logs/gpu_check/wheels}"
: "${GPU_CHECK_WORK:=logs/gpu_check}"
: "${GPU_CHECK_TRAIN_STEPS:=200}"
: "${GPU_CHECK_TRAIN_BATCH:=8}"
: "${GPU_CHECK_TRAIN_WORKERS:=auto}"
: "${GPU_CHECK_BENCH_EXTRA:=}"
: "${PYTHON:=python3}"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true HYDRA_FULL_ERROR=1

# step time caps in seconds (the budget above bounds their sum)
CAP_SETUP=240
CAP_ENV=60
CAP_TESTS=150
CAP_TRAIN=150
CAP_BENCH=300
BENCH_REPORT_RESERVE=40

# modules a run needs (checked after set-up; the message names the missing ones)
REQUIRED_MODULES="torch torchvision lightning hydra omegaconf kornia timm torchmetrics numpy scipy matplotlib PIL yaml pytest mematte"

usage() { sed -n '2,/^set -uo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }

# The benchmark's overrides: six models (three nets × bf16/fp32), four sizes, time caps that
# keep it near 3 minutes on an H200 (each point is a fresh process: ~5-8 s of start-up).
bench_args() {
    cat <<'EOF'
device=cuda
name=bench_cuda
++models.vitmatte_s_naive.label="ViTMatte-S paper-faithful fp32"
++models.vitmatte_s_naive_bf16={label:"ViTMatte-S paper-faithful bf16",overrides:${models.vitmatte_s_naive.overrides},precision:bf16,tile:null}
++models.vitmatte_s.precision=bf16
++models.vitmatte_s.label="ViTMatte-S ours bf16"
++models.vitmatte_s_fp32={label:"ViTMatte-S ours fp32",overrides:${models.vitmatte_s.overrides},precision:fp32}
++models.mematte_s.precision=bf16
++models.mematte_s.label="MEMatte-S bf16"
++models.mematte_s_fp32={label:"MEMatte-S fp32",overrides:${models.mematte_s.overrides},precision:fp32}
run_models=[mematte_s,vitmatte_s,vitmatte_s_naive,mematte_s_fp32,vitmatte_s_fp32,vitmatte_s_naive_bf16]
resolutions=[[1024,1024],[2048,2048],[4096,4096],[4872,6016]]
repeats=3
warmup=1
max_seconds=20
time_limit_s=60
point_timeout_s=90
extras.print_config=false
EOF
    local extra
    for extra in $GPU_CHECK_BENCH_EXTRA; do echo "$extra"; done
}

# ---------------------------------------------------------------------------- Python helper
helper_source() {
    cat <<'PYEOF'
"""Helpers of experiments/gpu_check.sh (written out by it, run with the project's python).

    python gpu_check_helpers.py train --out FILE.json --work DIR [--steps 200 ...]
    python gpu_check_helpers.py bench-report OVERRIDE ...
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(os.environ.get("GPU_CHECK_REPO") or Path.cwd()).resolve()

try:
    import lightning as L

    _Callback = L.Callback
except Exception:  # noqa: BLE001 - bench-report needs no Lightning
    _Callback = object


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(_Callback):
    """Training throughput and peak CUDA memory of one fit (a callback added on the command line).

    images/s over the optimiser steps after ``warmup_steps`` (CUDA-synchronised at both ends, not
    in between); peak = ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``) since a
    reset at the start of the fit: weights, optimiser state, teacher and activations.
    """

    def __init__(self, out: str, batch_size: int, warmup_steps: int = 20) -> None:
        self.out, self.batch_size, self.warmup_steps = Path(out), int(batch_size), int(warmup_steps)
        self.t_start = self.t0 = None
        self.step_start = self.step0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t_start, self.step_start = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is None and trainer.global_step - self.step_start >= self.warmup_steps:
            _sync()
            self.t0, self.step0 = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        _sync()
        t1 = time.perf_counter()
        record = {
            "batch_size": self.batch_size,
            "steps": trainer.global_step - self.step_start,
            "seconds_fit_loop": t1 - self.t_start if self.t_start is not None else None,
            "warmup_steps": self.warmup_steps,
        }
        if self.t0 is not None and trainer.global_step > self.step0:
            steps, seconds = trainer.global_step - self.step0, t1 - self.t0
            record.update(timed_steps=steps, timed_seconds=seconds, steps_per_s=steps / seconds,
                          images_per_s=steps * self.batch_size / seconds)
        if torch.cuda.is_available():
            record.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                          peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                          peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 1024**3, 3))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(record, indent=2))


def _run_train(argv: list[str]) -> None:
    """``python train.py argv`` in this process (mematte.cli.run_script_in_process)."""
    from mematte.cli import run_script_in_process

    code = run_script_in_process(ROOT / "train.py", argv)
    if code not in (0, None):
        raise RuntimeError(f"train.py exited with {code}")


def make_teacher(path: Path, extra: list[str]) -> None:
    """A random-init ViT-S ViTMatte written with the project's checkpoint writer."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mematte.checkpoints import build_net, save_net_checkpoint

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["backbone=vit_small", "router=none", *extra])
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    save_net_checkpoint(build_net(cfg.model), cfg.model, path, source="random init (gpu_check.sh)")


def train_throughput(args: argparse.Namespace) -> int:
    import torch

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # StepTimer's module for Hydra
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    result = {
        "gpu": gpu, "torch": torch.__version__,
        "settings": {"steps": args.steps, "batch_size": args.batch, "crop_size": args.crop,
                     "image_size": args.image, "num_workers": args.workers, "trainer": args.trainer,
                     "precision": args.precision, "warmup_steps_excluded": args.warmup,
                     "data": "synthetic_augment", "extra_overrides": args.extra},
        "runs": {},
    }
    teacher = work / "teacher_vit_small_random.ckpt"
    start = time.perf_counter()
    try:
        make_teacher(teacher, args.teacher_extra)
        result["teacher"] = {"ckpt": str(teacher), "seconds": round(time.perf_counter() - start, 2),
                             "what": "random-init ViT-S ViTMatte (backbone=vit_small router=none)"}
    except Exception as err:  # noqa: BLE001 - the ViTMatte run still goes on
        traceback.print_exc()
        result["teacher"] = {"error": f"{type(err).__name__}: {err}"}
        teacher = None
    common = [
        "backbone=vit_small", f"trainer={args.trainer}", f"trainer.precision={args.precision}",
        "data=synthetic_augment", f"data.train_set.crop_size={args.crop}",
        f"data.train_set.image_size={args.image}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", f"data.persistent_workers={str(args.workers > 0).lower()}",
        f"data.pin_memory={str(args.trainer != 'cpu').lower()}",
        "data.val_set.num_samples=1", "data.test_set.num_samples=1",
        f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={max(args.steps, 1) * 10}",
        "trainer.log_every_n_steps=50", "validate_before_training=false", "test=false", "logger=csv",
        "resume=never", "seed=0", "extras.print_config=false", "callbacks.rich_progress_bar=null",
        f"callbacks.last_checkpoint.every_n_train_steps={max(args.steps, 1) * 10}",
        *args.extra,
    ]
    runs = {"mematte_s": ["model=mematte", *([f"teacher.ckpt={teacher}"] if teacher else [])],
            "vitmatte_s": ["router=none"]}
    failures = 0 if teacher else 1
    for name, extra in runs.items():
        if args.only and name not in args.only:
            continue
        run_dir, timer = work / name, work / f"{name}_timer.json"
        shutil.rmtree(run_dir, ignore_errors=True)
        timer.unlink(missing_ok=True)
        overrides = [*common, *extra]
        argv = [*overrides, f"hydra.run.dir={run_dir}",
                "+callbacks.gpu_check_timer._target_=gpu_check_helpers.StepTimer",
                f"+callbacks.gpu_check_timer.out={timer}",
                f"+callbacks.gpu_check_timer.batch_size={args.batch}",
                f"+callbacks.gpu_check_timer.warmup_steps={args.warmup}"]
        entry: dict = {"overrides": overrides, "distilled_from": str(teacher) if name == "mematte_s" and teacher else None}
        print(f"[gpu_check] {name}: python train.py {' '.join(overrides)}", flush=True)
        t0 = time.perf_counter()
        try:
            _run_train(argv)
            entry["status"] = "ok"
        except BaseException as err:  # noqa: BLE001 - report and go on with the next run
            traceback.print_exc()
            entry["status"] = f"failed: {type(err).__name__}: {err}"
            failures += 1
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        if timer.is_file():
            entry["timer"] = json.loads(timer.read_text())
            entry["images_per_s"] = entry["timer"].get("images_per_s")
            entry["peak_cuda_allocated_gib"] = entry["timer"].get("peak_allocated_gib")
        metrics = run_dir / "metrics.json"
        if metrics.is_file():
            summary = json.loads(metrics.read_text())
            entry["metrics_json"] = {k: summary.get(k) for k in ("train_seconds", "global_step")}
            if summary.get("train_seconds"):
                # trainer.fit's wall time: start-up of the loaders, warm-up steps and the
                # checkpoint at the end included
                entry["images_per_s_fit_wall"] = summary["global_step"] * args.batch / summary["train_seconds"]
        if entry["status"] == "ok" and entry.get("images_per_s") is None:
            entry["status"] = "failed: no throughput recorded"
            failures += 1
        result["runs"][name] = entry
        print(f"[gpu_check] {name}: {entry['status']}, {entry.get('images_per_s')} images/s, "
              f"peak {entry.get('peak_cuda_allocated_gib')} GiB", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        Path(args.out).write_text(json.dumps(result, indent=2))
    result["total_s"] = round(time.perf_counter() - start, 2)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 1 if failures else 0


def bench_report(overrides: list[str]) -> int:
    """Reports of an interrupted benchmark from its jsonl: the points not reached as timeouts."""
    from hydra import compose, initialize_config_dir

    from mematte.bench import GIB, PointResult, available_memory_bytes, point_key, write_reports

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=overrides)
    out_dir = Path(cfg.out_dir)
    if not out_dir.is_absolute():
        out_dir = ROOT / out_dir
    jsonl = out_dir / f"{cfg.name}.jsonl"
    found: dict[str, PointResult] = {}
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            try:
                result = PointResult(**json.loads(line)["result"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if result.device.startswith(str(cfg.device)):
                found[point_key(result.model, result.height, result.width)] = result  # the latest wins
    results = []
    for model in cfg.run_models:
        for height, width in (tuple(r) for r in cfg.resolutions):
            results.append(found.get(point_key(model, height, width)) or PointResult(
                model, height, width, "timeout", device=str(cfg.device),
                reason="not reached: gpu_check.sh stopped the benchmark at its time cap"))
    try:
        budget = (int(float(cfg.memory_budget_gb) * GIB) if cfg.memory_budget_gb is not None
                  else int(cfg.budget_fraction * available_memory_bytes(str(cfg.device))))
    except Exception:  # noqa: BLE001 - only shown in the table's header
        budget = 0
    write_reports(results, cfg, out_dir / str(cfg.name), budget)
    print(f"[gpu_check] bench report from {jsonl}: {sum(r.status == 'ok' for r in results)} of "
          f"{len(results)} points measured")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--work", required=True)
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--crop", type=int, default=512)
    t.add_argument("--image", type=int, default=640)
    t.add_argument("--workers", type=int, default=8)
    t.add_argument("--trainer", default="gpu")
    t.add_argument("--precision", default="bf16-mixed")
    t.add_argument("--only", nargs="*", default=[], help="run only these (mematte_s, vitmatte_s)")
    t.add_argument("--extra", nargs="*", default=[], help="more train.py overrides for both runs")
    t.add_argument("--teacher-extra", nargs="*", default=[], help="overrides of the teacher's net")
    b = sub.add_parser("bench-report")
    b.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.cmd == "train":
        return train_throughput(args)
    return bench_report(args.overrides)


if __name__ == "__main__":
    sys.exit(main())
PYEOF
}

# ---------------------------------------------------------------------------- wheels
# Wheels of what the project needs beyond the GPU image's python (hydra, omegaconf, antlr4,
# kornia), for the image's Python (3.12, x86-64), at the versions of the local .venv.
fetch_wheels() {
    local dir=${1:-$GPU_CHECK_WHEELS} py=${GPU_CHECK_FETCH_PYTHON:-$GPU_CHECK_VENV/bin/python}
    local pyver=${GPU_CHECK_WHEEL_PYTHON:-3.12} name version spec rc=0
    [[ -x $py ]] || py=$PYTHON
    mkdir -p "$dir"
    for name in hydra-core omegaconf antlr4-python3-runtime kornia kornia_rs; do
        version=$("$py" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
        spec=$name${version:+==$version}
        echo "fetching $spec"
        "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version "$pyver" --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$spec" \
        || "$py" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$dir" "$spec" \
        || { echo "could not fetch $spec" >&2; rc=1; }
    done
    ls -l "$dir"
    echo "carry this folder to the GPU machine (device tool: carry=[\"$dir\"])"
    return $rc
}

# ---------------------------------------------------------------------------- steps
import_check() {  # prints the missing modules; fails if any
    "$1" - "$REQUIRED_MODULES" <<'EOF'
import importlib, sys
missing = []
for name in sys.argv[1].split():
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001
        missing.append(f"{name} ({type(err).__name__}: {err})")
print("missing: " + "; ".join(missing) if missing else "all required modules import")
sys.exit(1 if missing else 0)
EOF
}

registry_reachable() {
    timeout 30 "$PYTHON" -m pip index versions pip --timeout 5 --retries 0 \
        --disable-pip-version-check >/dev/null 2>&1
}

setup_link() {
    local venv=$GPU_CHECK_VENV site
    "$PYTHON" -c 'import torch' || {
        echo "'$PYTHON' has no torch to link: install torch with CUDA, set PYTHON, or use GPU_CHECK_SETUP=make" >&2
        return 1
    }
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv --without-pip "$venv" || return 1
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    # the base interpreter's packages (torch with CUDA, Lightning, ...) — also when it is a venv
    "$PYTHON" -c 'import os, sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)))' \
        >"$site/_gpu_check_base_site.pth" || return 1
    echo "linked base site-packages: $(tr '\n' ' ' <"$site/_gpu_check_base_site.pth")"
    if compgen -G "$GPU_CHECK_WHEELS/*.whl" >/dev/null; then
        local wheel pip=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps
                         --no-compile --no-cache-dir --upgrade --target "$site")
        if "${pip[@]}" "$GPU_CHECK_WHEELS"/*.whl; then
            echo "installed wheels: $(cd "$GPU_CHECK_WHEELS" && ls ./*.whl | tr '\n' ' ')"
        else  # one by one: a wheel for another Python or platform need not sink the others
            for wheel in "$GPU_CHECK_WHEELS"/*.whl; do
                "${pip[@]}" "$wheel" && echo "installed $(basename "$wheel")" \
                    || echo "could not install $(basename "$wheel") (the import check decides)"
            done
        fi
    else
        echo "no wheels under $GPU_CHECK_WHEELS (make them with --fetch-wheels where pip works)"
    fi
    echo "$REPO/src" >"$site/_mematte_src.pth"  # what `pip install -e .` puts on the path
}

step_setup() {
    if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
        echo "GPU_CHECK_PYTHON=$GPU_CHECK_PYTHON: used as it is (no set-up)"
        import_check "$GPU_CHECK_PYTHON"
        return
    fi
    local py=$GPU_CHECK_VENV/bin/python mode=$GPU_CHECK_SETUP
    if [[ -x $py ]] && import_check "$py"; then
        echo "reusing $GPU_CHECK_VENV"
        return 0
    fi
    if [[ $mode == auto ]]; then
        if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            mode=link  # the machine's CUDA torch: no multi-GB download, works without a registry
        elif registry_reachable; then
            mode=make
        else
            mode=link
        fi
    fi
    echo "set-up: $mode (base interpreter $PYTHON)"
    case $mode in
        make) make setup PYTHON="$PYTHON" VENV="$GPU_CHECK_VENV" || return 1 ;;
        link | offline) setup_link || return 1 ;;
        *) echo "GPU_CHECK_SETUP=$mode: choose auto, link or make" >&2; return 1 ;;
    esac
    import_check "$py" || {
        echo "the environment lacks the modules above. Without a registry: fetch their wheels where pip works" \
             "(bash experiments/gpu_check.sh --fetch-wheels) and carry $GPU_CHECK_WHEELS" >&2
        return 1
    }
}

step_env() {
    "$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no CUDA device)")' \
        | tee "$WORK/env_line.txt"
    "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for name in ("lightning", "hydra", "omegaconf", "kornia", "timm", "torchmetrics", "numpy"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:  # noqa: BLE001
        print(name, "MISSING", err)
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    git -C "$REPO" rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /'
    git -C "$REPO" status --short 2>/dev/null | head -20
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'
}

step_tests() {
    local files timeout_opt=()
    mapfile -t files < <(grep -l 'mark\.cuda' tests/test_*.py)
    ((${#files[@]})) || { echo "no cuda-marked test files under tests/" >&2; return 1; }
    "$PY" -c 'import pytest_timeout' 2>/dev/null && timeout_opt=(--timeout 120)
    MEMATTE_GPU_FIGURES="$OUT_DIR/cuda_figures.jsonl" "$PY" -m pytest -m cuda -q -rA -p no:cacheprovider \
        "${timeout_opt[@]}" --junitxml="$OUT_DIR/junit_cuda.xml" "${files[@]}"
    local rc=$?
    ((rc == 5)) && echo "no cuda test ran (exit 5)" >&2
    return $rc
}

step_train() {
    local workers=$GPU_CHECK_TRAIN_WORKERS cores
    if [[ $workers == auto ]]; then
        cores=$(nproc 2>/dev/null || echo 4)
        workers=$((cores > 4 ? cores - 2 : 2))
        ((workers > 12)) && workers=12
    fi
    "$PY" "$WORK/gpu_check_helpers.py" train --out "$OUT_DIR/train_throughput.json" --work "$WORK/train" \
        --steps "$GPU_CHECK_TRAIN_STEPS" --batch "$GPU_CHECK_TRAIN_BATCH" --workers "$workers"
}

step_bench() {
    local args errors
    mapfile -t args < <(bench_args)
    echo "python bench.py ${args[*]}"
    "$PY" bench.py "${args[@]}" || return
    # a point that crashed (status error) fails the step; skipped / oom rows are results
    errors=$(grep -c '^[^,]*,[0-9]*,[0-9]*,[0-9]*,error,' experiments/results/bench_cuda.csv)
    ((errors == 0)) || { echo "$errors benchmark point(s) ended in an error: see bench_cuda.md" >&2; return 1; }
}

step_bench_report() {
    local args
    mapfile -t args < <(bench_args)
    "$PY" "$WORK/gpu_check_helpers.py" bench-report "${args[@]}"
}

# an internal entry: one step in its own process (so that `timeout` can bound it)
if [[ ${1:-} == --step ]]; then
    "step_$2"
    exit $?
fi

case ${1:-} in
    -h | --help) usage; exit 0 ;;
    --print-bench-args) bench_args; exit 0 ;;
    --print-helper) helper_source; exit 0 ;;
    --fetch-wheels) fetch_wheels "${2:-}"; exit $? ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 64 ;;
esac

# ---------------------------------------------------------------------------- driver
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR" "$GPU_CHECK_WORK" || exit 1
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(cd "$GPU_CHECK_WORK" && pwd)
PACK=${GPU_CHECK_PACK:-}
if [[ -z $PACK ]]; then
    PACK=0
    [[ -n ${OUT:-} && -d $OUT && $(cd "$OUT" && pwd) == "$OUT_DIR" ]] && PACK=1
fi
if ((PACK)); then LOG_DIR=$WORK/logs; else LOG_DIR=$OUT_DIR/logs; fi
rm -rf "$LOG_DIR" "$OUT_DIR"/{summary.md,junit_cuda.xml,cuda_figures.jsonl,train_throughput.json,logs.tar.gz} \
    "$OUT_DIR"/bench_cuda.{csv,md,png}
mkdir -p "$LOG_DIR"
PY=${GPU_CHECK_PYTHON:-$GPU_CHECK_VENV/bin/python}
export OUT_DIR WORK PY GPU_CHECK_REPO=$REPO
helper_source >"$WORK/gpu_check_helpers.py"

START=$SECONDS
FAILED=0
ROWS=()
FAILED_LOGS=()

# run_step NAME CAP: `--step NAME` under timeout (CAP, or what is left of the budget)
run_step() {
    local name=$1 cap=$2 left limit t0 rc status
    left=$((GPU_CHECK_BUDGET_S - (SECONDS - START)))
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "=== [$name] skipped: ${left}s left of the ${GPU_CHECK_BUDGET_S}s budget"
        ROWS+=("| $name | skipped (budget spent) | | 0 | $limit | |")
        FAILED=1
        return 1
    fi
    echo "=== [$name] start, limit ${limit}s ($(date -u +%H:%M:%S) UTC, ${left}s of the budget left)"
    t0=$SECONDS
    timeout -k 10 "$limit" bash "$SELF" --step "$name" >"$LOG_DIR/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        124 | 137) status="TIMEOUT after ${limit}s" ;;
        *) status="FAILED" ;;
    esac
    echo "=== [$name] $status (exit $rc, $((SECONDS - t0))s)"
    ROWS+=("| $name | $status | $rc | $((SECONDS - t0)) | $limit | logs/$name.log |")
    if ((rc != 0)); then
        FAILED=1
        FAILED_LOGS+=("$name")
        tail -n 25 "$LOG_DIR/$name.log" | sed 's/^/    /'
    fi
    save_progress
    return $rc
}

# the summary so far and, when packing, the logs so far (what a stop from outside leaves)
save_progress() {
    write_summary "$( ((FAILED)) && echo 1 || echo 0) (so far)"
    if ((PACK)); then  # the device tool returns at most 8 files: the logs travel as one
        tar czf "$OUT_DIR/logs.tar.gz.tmp" -C "$(dirname "$LOG_DIR")" "$(basename "$LOG_DIR")" \
            && mv "$OUT_DIR/logs.tar.gz.tmp" "$OUT_DIR/logs.tar.gz"
    fi
}

write_summary() {
    local code=$1 s=$OUT_DIR/summary.md name
    {
        echo "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'))"
        echo
        echo "torch / CUDA / GPU: $(cat "$WORK/env_line.txt" 2>/dev/null || echo unknown);" \
             "python: $PY; total $((SECONDS - START)) s of a ${GPU_CHECK_BUDGET_S} s budget;" \
             "steps: $GPU_CHECK_STEPS; exit $code."
        echo
        echo "| step | status | exit | seconds | limit s | log |"
        echo "|---|---|---:|---:|---:|---|"
        printf '%s\n' "${ROWS[@]}"
        if [[ -f $OUT_DIR/junit_cuda.xml ]]; then
            echo
            echo "## CUDA tests (junit_cuda.xml)"
            echo
            grep -o '<testsuite [^>]*>' "$OUT_DIR/junit_cuda.xml" | grep -o '\(tests\|failures\|errors\|skipped\|time\)="[^"]*"' | tr '\n' ' '
            echo
            "$PY" - "$OUT_DIR/junit_cuda.xml" <<'PYJ' 2>/dev/null
import sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).iter("testcase"):
    for bad in case.findall("failure") + case.findall("error"):
        first = (bad.get("message") or "").strip().splitlines()[:1]
        print(f"- {bad.tag}: {case.get('name')}: {first[0][:300] if first else ''}")
PYJ
        fi
        if [[ -s $OUT_DIR/cuda_figures.jsonl ]]; then
            echo
            echo "## Mixed-precision figures (cuda_figures.jsonl)"
            echo
            echo '```'
            cat "$OUT_DIR/cuda_figures.jsonl"
            echo '```'
        fi
        if [[ -f $OUT_DIR/train_throughput.json ]]; then
            echo
            echo "## Training throughput (train_throughput.json)"
            echo
            "$PY" - "$OUT_DIR/train_throughput.json" <<'EOF' 2>/dev/null || cat "$OUT_DIR/train_throughput.json"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"GPU {r.get('gpu')}, torch {r.get('torch')}, settings {json.dumps(r.get('settings'))}")
print()
print("| run | status | images/s (after warm-up) | images/s (fit wall) | peak CUDA allocated GiB | train_seconds | global_step |")
print("|---|---|---:|---:|---:|---:|---:|")
for name, e in r.get("runs", {}).items():
    m = e.get("metrics_json") or {}
    f = lambda v, d=1: "" if v is None else f"{v:.{d}f}"
    print(f"| {name} | {e.get('status')} | {f(e.get('images_per_s'))} | {f(e.get('images_per_s_fit_wall'))} | "
          f"{f(e.get('peak_cuda_allocated_gib'), 2)} | {f(m.get('train_seconds'))} | {m.get('global_step', '')} |")
EOF
        fi
        if [[ -f $OUT_DIR/bench_cuda.md ]]; then
            echo
            echo "## Benchmark (bench_cuda.md)"
            echo
            sed '1{/^# /d}' "$OUT_DIR/bench_cuda.md"
        fi
        for name in "${FAILED_LOGS[@]}"; do
            echo
            echo "## Tail of logs/$name.log"
            echo
            echo '```'
            tail -n 40 "$LOG_DIR/$name.log"
            echo '```'
        done
    } >"$s"
}

finish() {
    local code=$1
    save_progress
    write_summary "$code"
    echo
    cat "$OUT_DIR/summary.md"
    echo
    echo "| step | status | exit | seconds | limit s | log |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "gpu_check: outputs in $OUT_DIR ($(ls "$OUT_DIR" | tr '\n' ' ')); logs in" \
         "$( ((PACK)) && echo "logs.tar.gz" || echo "$LOG_DIR"); exit $code"
    exit "$code"
}

echo "gpu_check: repo $REPO, outputs $OUT_DIR, scratch $WORK, budget ${GPU_CHECK_BUDGET_S}s, steps: $GPU_CHECK_STEPS"
run_step setup "$CAP_SETUP" || finish 1
run_step env "$CAP_ENV"
env_rc=$?
echo "torch, CUDA, GPU: $(cat "$WORK/env_line.txt" 2>/dev/null)"
case $env_rc in
    0) ;;
    3) echo "CUDA is not available to $PY: nothing to check on this machine (torch.cuda.is_available() is False)."
       ROWS[-1]="| env | CUDA unavailable: stopped | 3 | | | logs/env.log |"
       finish 2 ;;
    *) finish 1 ;;
esac
for step in $GPU_CHECK_STEPS; do
    case $step in
        tests) run_step tests "$CAP_TESTS" ;;
        train) run_step train "$CAP_TRAIN" ;;
        bench)
            touch "$WORK/bench.start"
            left=$((GPU_CHECK_BUDGET_S - (SECONDS - START) - BENCH_REPORT_RESERVE))
            run_step bench $((CAP_BENCH < left ? CAP_BENCH : left))
            if ! [[ experiments/results/bench_cuda.md -nt $WORK/bench.start ]]; then
                # an interrupted benchmark writes no tables: make them from its finished points
                echo "=== [bench_report] tables from the finished points (bench_cuda.jsonl)"
                timeout -k 5 $((BENCH_REPORT_RESERVE - 10)) bash "$SELF" --step bench_report \
                    >"$LOG_DIR/bench_report.log" 2>&1 || tail -n 20 "$LOG_DIR/bench_report.log"
            fi
            for ext in csv md png jsonl; do
                [[ experiments/results/bench_cuda.$ext -nt $WORK/bench.start ]] || continue
                if [[ $ext == jsonl ]]; then
                    cp experiments/results/bench_cuda.jsonl "$LOG_DIR/"
                else
                    cp "experiments/results/bench_cuda.$ext" "$OUT_DIR/"
                fi
            done
            save_progress
            ;;
        *) echo "unknown step '$step' in GPU_CHECK_STEPS (tests, train, bench)"; FAILED=1 ;;
    esac
done
finish "$FAILED"
