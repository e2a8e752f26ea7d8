"""CUDA checks (``pytest -m cuda``), skipped without a CUDA GPU; experiments/gpu_check.sh runs
them on a GPU machine (issue 18):

- the :class:`~mematte.inference.Predictor` in bf16 and fp16 against fp32 on synthetic test
  images (max |Δα|, mean |Δα| in the unknown region, the change of SAD);
- the routed attention under CUDA autocast bf16/fp16 against fp32: the training path
  (``masked_dense_attention``, ``softmax="official"`` and ``"exact"``, and
  ``RoutedBlock.attend_dense``) and the inference path (``RoutedBlock.attend_gathered``);
- one DDP + SyncBatchNorm training run on one GPU (``trainer=ddp trainer.devices=1``);
- a resume on GPU without a kill: 2 steps, then ``ckpt_path=`` that checkpoint with
  ``max_steps=4`` continues at step 2.

Figures are printed, recorded in the junit xml (``record_property``) and, when
``MEMATTE_GPU_FIGURES`` names a file, appended to it as JSON lines.

The last tests are not cuda-marked: they check experiments/gpu_check.sh itself on any machine
(valid bash, wired into ``make gpu-check``, its benchmark overrides compose, its report helper,
and its early stop without CUDA).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR, ROOT, TINY_TRAIN, compose_config

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
SCRIPT = ROOT / "experiments" / "gpu_check.sh"
FIGURES_ENV = "MEMATTE_GPU_FIGURES"
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
RESUME_ENV = ("MEMATTE_RESUME_RUN_DIR", "MEMATTE_RESUME_CKPT", "MEMATTE_RESUME_STEP", "MEMATTE_RESUME_DECIDED_BY")

# Bounds of the Predictor's half-precision error against fp32 (random-init ViT-S nets, unknown
# region of the synthetic test images). CPU autocast measured max |Δα| ≈ 0.002 (bf16) and
# 0.0004 (fp16), mean ≈ 0.001 / 0.0001, SAD change ≤ 0.3% / 0.02%: the bounds leave room for
# other kernels and for top-K routing flips of MEMatte, and still catch a broken path (NaN,
# an overflow, a dtype mix-up), which moves alpha by tenths.
PREDICTOR_BOUNDS = {
    "bf16": {"max_abs": 0.1, "mean_abs_unknown": 0.01, "sad_rel": 0.03},
    "fp16": {"max_abs": 0.02, "mean_abs_unknown": 0.002, "sad_rel": 0.01},
}
# A ViT-S routed block under autocast, max |Δ| / max |fp32| over the routed tokens (CPU autocast
# measured ≈ 7e-3 for bf16, 8.5e-4 for fp16: the roundings of the qkv and output projections)
ATTENTION_BOUNDS = {"bf16": 3e-2, "fp16": 5e-3}


def record(record_property, test: str, **figures) -> None:
    """Print the figures, put them in the junit xml and append them to $MEMATTE_GPU_FIGURES."""
    figures = {k: (round(v, 7) if isinstance(v, float) else v) for k, v in figures.items()}
    for key, value in figures.items():
        record_property(key, value)
    line = json.dumps({"test": test, **figures})
    print(line)
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.fixture
def strict_fp32():
    """fp32 references without TF32 (cuDNN convolutions use TF32 by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def isolated_resume_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """train() exports its resume decision for DDP children: undo it after the test."""
    for name in RESUME_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- Predictor
BENCH_NETS = {
    "vitmatte_s": ["backbone=vit_small", "router=none"],
    "mematte_s": ["backbone=vit_small", "router=local_global", "routing=fixed", "routing.target=0.25"],
}


@functools.cache
def net_config(name: str) -> dict:
    """The resolved net config of a ViT-S model, as bench.py composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=BENCH_NETS[name])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.model, resolve=True)


@functools.cache
def synthetic_images() -> list[dict]:
    """Three synthetic test images, 600–1100 px a side (so the 512 px decoder tiles are used)."""
    from mematte.data.synthetic import SyntheticMattingEvalSet

    data = SyntheticMattingEvalSet(split="test", num_samples=3, seed=0, min_size=600, max_size=1100)
    return [data[i] for i in range(len(data))]


def predictor_figures(net, precision: str) -> tuple[list[dict], list]:
    from mematte.inference import Predictor
    from mematte.metrics import region_mask, sad, to_uint8

    reference = Predictor(net, device="cuda", precision="fp32", tile=512)
    half = Predictor(net, device="cuda", precision=precision, tile=512)
    assert half.autocast_dtype == HALF[precision]
    rows, alphas = [], []
    for sample in synthetic_images():
        image, trimap, gt = sample["image"], sample["trimap"], sample["alpha"]
        want = reference(image, trimap).alpha[0, 0]
        got = half(image, trimap).alpha[0, 0]
        assert got.dtype == torch.float32 and bool(torch.isfinite(got).all()), f"{precision}: non-finite alpha"
        mask = region_mask(to_uint8(trimap[0].numpy()), "unknown")
        gt_u8 = to_uint8(gt[0].numpy())
        sad_ref = sad(to_uint8(want.numpy()), gt_u8, mask)
        sad_half = sad(to_uint8(got.numpy()), gt_u8, mask)
        diff = (got - want).abs()
        rows.append({
            "image": sample["name"], "size": list(image.shape[-2:]),
            "max_abs": float(diff.max()), "mean_abs_unknown": float(diff.numpy()[mask].mean()),
            "sad_fp32": sad_ref, "sad_half": sad_half,
            "sad_rel": abs(sad_half - sad_ref) / max(sad_ref, 1e-9),
        })
        alphas.append(got)
    return rows, alphas


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("model", list(BENCH_NETS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_predictor_half_precision_close_to_fp32(model, precision, strict_fp32, record_property):
    from mematte.checkpoints import build_net

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    net = build_net(net_config(model))
    rows, _ = predictor_figures(net, precision)
    worst = {key: max(r[key] for r in rows) for key in ("max_abs", "mean_abs_unknown", "sad_rel")}
    record(record_property, f"predictor[{model}-{precision}]", model=model, precision=precision,
           gpu=torch.cuda.get_device_name(0), **{f"worst_{k}": v for k, v in worst.items()},
           per_image=rows)
    for key, bound in PREDICTOR_BOUNDS[precision].items():
        assert worst[key] <= bound, f"{model} {precision}: {key} {worst[key]:.4g} > {bound} ({rows})"


# --------------------------------------------------------------------------- routed attention
def attention_inputs(b: int = 12, n: int = 1024, d: int = 64, logit_std: float = 4.0, seed: int = 0):
    """q, k, v (b, n, d) fp32 on CUDA, router logits (b, n, 2), and the logit scale."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, b, n, d, generator=gen).unbind(0)
    router_logits = torch.randn(b, n, 2, generator=gen)
    return q.cuda(), k.cuda(), v.cuda(), router_logits.cuda(), logit_std / math.sqrt(d)


def straight_through(router_logits: torch.Tensor) -> torch.Tensor:
    prob = router_logits.softmax(-1)[..., 0]
    hard = (prob >= 0.5).to(prob.dtype)
    return hard - prob.detach() + prob


def dense_attention_run(fn, q, k, v, router_logits, autocast_dtype=None):
    """Forward + backward of ``fn(q, k, v, keep)`` on fresh leaves, optionally under autocast."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, router_logits)]
    context = torch.autocast("cuda", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with context:
        out = fn(leaves[0], leaves[1], leaves[2], straight_through(leaves[3]))
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
    (out.float() * cot).sum().backward()
    return out.detach(), [t.grad.detach() for t in leaves]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12))


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("softmax", ["official", "exact"])
def test_masked_dense_attention_under_cuda_autocast(softmax, precision, strict_fp32, record_property):
    """fp32 inputs: autocast must not touch the fp32 computation (forward and gradients). Half
    inputs (what autocast's qkv projection yields): the output, in that dtype, matches fp32 on
    the same values. The CUDA fp32 result matches float64 on the CPU."""
    from mematte.models.routed_block import masked_dense_attention

    q, k, v, router_logits, scale = attention_inputs()
    fn = functools.partial(masked_dense_attention, scale=scale, softmax=softmax)
    out32, grads32 = dense_attention_run(fn, q, k, v, router_logits)
    out_ac, grads_ac = dense_attention_run(fn, q, k, v, router_logits, HALF[precision])
    assert out_ac.dtype == torch.float32
    torch.testing.assert_close(out_ac, out32, rtol=1e-5, atol=1e-6)
    for name, got, want in zip(("q", "k", "v", "decisions"), grads_ac, grads32):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"d{n}: {m}")

    # the CUDA fp32 kernels against float64 on the CPU (first 2 rows of the batch: N×N in float64)
    ref64 = masked_dense_attention(q[:2].double().cpu(), k[:2].double().cpu(), v[:2].double().cpu(),
                                   straight_through(router_logits[:2].double().cpu()), scale, softmax=softmax)
    err64 = rel_err(out32[:2].cpu(), ref64)
    assert err64 < 5e-5

    half_in = [t.to(HALF[precision]) for t in (q, k, v)]
    keep = straight_through(router_logits).detach()
    with torch.autocast("cuda", dtype=HALF[precision]):
        out_half = masked_dense_attention(*half_in, keep, scale, softmax=softmax)
    assert out_half.dtype == HALF[precision] and bool(torch.isfinite(out_half).all())
    want = masked_dense_attention(*(t.float() for t in half_in), keep, scale, softmax=softmax)
    err_half = rel_err(out_half, want)
    record(record_property, f"masked_dense_attention[{softmax}-{precision}]", softmax=softmax,
           precision=precision, fp32_vs_cpu_float64=err64, half_inputs_rel_err=err_half)
    assert err_half < {"bf16": 8e-3, "fp16": 1e-3}[precision]  # one rounding of the output


def routed_block(softmax: str):
    from mematte.models import ltrm as ltrms
    from mematte.models import router as routers
    from mematte.models.routed_block import RoutedBlock

    torch.manual_seed(0)
    return RoutedBlock(384, num_heads=6, router=routers.LocalGlobalRouter, ltrm=ltrms.ConvTokenRefiner,
                       masked_softmax=softmax).cuda()


def block_inputs(equal_counts: bool, b: int = 2, n: int = 1024, c: int = 384):
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(b, n, c, generator=gen) * 2
    refined = torch.randn(b, n, c, generator=gen)
    decision = torch.zeros(b, n)
    for i in range(b):
        k = n // 4 if equal_counts else n // 4 + 37 * i  # unequal: one attention call per image
        decision[i, torch.randperm(n, generator=gen)[:k]] = 1
    return y.cuda(), decision.cuda(), refined.cuda()


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("softmax", ["official", "exact"])
@pytest.mark.parametrize("equal_counts", [True, False], ids=["same_k", "k_per_image"])
def test_routed_block_paths_under_cuda_autocast(softmax, precision, equal_counts, strict_fp32, record_property):
    """The training path (attend_dense) and the inference path (attend_gathered) of a ViT-S
    routed block under autocast against fp32; in fp32 the exact dense path equals the gathered
    one on CUDA too."""
    block = routed_block(softmax)
    y, decision, refined = block_inputs(equal_counts)
    routed = decision.bool()
    figures = {}
    with torch.no_grad():
        block.train()
        dense32 = block.attend_dense(y, decision, refined)
        with torch.autocast("cuda", dtype=HALF[precision]):
            dense_half = block.attend_dense(y, decision, refined)
        block.eval()
        gathered32 = block.attend_gathered(y, decision, refined)
        with torch.autocast("cuda", dtype=HALF[precision]):
            gathered_half = block.attend_gathered(y, decision, refined)
    for name, out in (("dense", dense_half), ("gathered", gathered_half)):
        assert bool(torch.isfinite(out).all()), f"{name} {precision}: non-finite output"
    figures["dense_rel_err"] = rel_err(dense_half[routed], dense32[routed])
    figures["gathered_rel_err"] = rel_err(gathered_half[routed], gathered32[routed])
    figures["gathered_vs_dense_fp32"] = rel_err(gathered32[routed], dense32[routed])
    # unrouted tokens are the LTRM output, untouched by the attention
    torch.testing.assert_close(gathered32[~routed], refined[~routed], rtol=0, atol=0)
    record(record_property, f"routed_block[{softmax}-{precision}-{'same_k' if equal_counts else 'k_per_image'}]",
           softmax=softmax, precision=precision, equal_counts=equal_counts, **figures)
    bound = ATTENTION_BOUNDS[precision]
    assert figures["dense_rel_err"] < bound and figures["gathered_rel_err"] < bound, figures
    # exact masked softmax = attention over the gathered tokens; the official formula's eps
    # terms move it by ~1e-6 of the scale
    assert figures["gathered_vs_dense_fp32"] < (1e-4 if softmax == "exact" else 1e-3), figures


# --------------------------------------------------------------------------- training on GPU
class SyncBatchNormProbe(L.Callback):
    """Writes what the DDP run trains with (used by the subprocess below, via Hydra)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        modules = list(pl_module.modules())
        self.out.write_text(json.dumps({
            "sync_batchnorm": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in modules),
            "plain_batchnorm": sum(type(m) is torch.nn.BatchNorm2d for m in modules),
            "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size,
            "device": str(pl_module.device),
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "precision": str(trainer.precision),
        }))


@pytest.mark.cuda
@requires_cuda
def test_ddp_syncbatchnorm_one_gpu(tmp_path, record_property):
    run_dir, probe = tmp_path / "ddp", tmp_path / "probe.json"
    overrides = [o for o in TINY_TRAIN if o != "trainer=cpu"]
    args = [*overrides, "trainer=ddp", "trainer.devices=1", "trainer.sync_batchnorm=true",
            "callbacks.rich_progress_bar=null",
            "+callbacks.syncbn_probe._target_=test_cuda.SyncBatchNormProbe",
            f"+callbacks.syncbn_probe.out={probe}", f"hydra.run.dir={run_dir}"]
    path = os.pathsep.join(p for p in (str(ROOT / "tests"), str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": path, "HYDRA_FULL_ERROR": "1"}
    for name in (*RESUME_ENV, "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((run_dir / "metrics.json").read_text())
    seen = json.loads(probe.read_text())
    record(record_property, "ddp_syncbatchnorm", global_step=summary["global_step"],
           train_seconds=summary.get("train_seconds"), **seen)
    assert summary["global_step"] == 2
    assert seen["strategy"] == "DDPStrategy" and seen["world_size"] == 1
    assert seen["device"].startswith("cuda") and seen["backend"] == "nccl"
    assert seen["sync_batchnorm"] > 0 and seen["plain_batchnorm"] == 0, seen
    assert set(summary["test"]) >= {"sad", "mse", "grad", "conn"}


RESUME_RUN = [
    *(o for o in TINY_TRAIN if o != "trainer=cpu"), "trainer=gpu", "test=false", "validate_before_training=false",
    "callbacks.rich_progress_bar=null", "callbacks.last_checkpoint.every_n_train_steps=1",
    "data.train_set.image_size=96", "resume=never",
]


@pytest.mark.cuda
@requires_cuda
def test_resume_on_gpu_continues_at_the_checkpoint_step(tmp_path, isolated_resume_env, record_property):
    from mematte.cli import train

    try:
        first = compose_config("train", [*RESUME_RUN, "trainer.max_steps=2"], tmp_path / "first")
        train(first)
        last = tmp_path / "first" / "checkpoints" / "last.ckpt"
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 2
        assert ckpt["optimizer_states"], "no optimiser state to resume"

        # the same command with more steps, started from that checkpoint (no kill in between)
        second = compose_config("train", [*RESUME_RUN, "trainer.max_steps=4", f"ckpt_path={last}"],
                                tmp_path / "second")
        train(second)
    finally:
        GlobalHydra.instance().clear()
    summary = json.loads((tmp_path / "second" / "metrics.json").read_text())
    with (tmp_path / "second" / "csv" / "metrics.csv").open() as f:
        steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})
    final = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    record(record_property, "resume_gpu", first_step=int(ckpt["global_step"]), final_step=summary["global_step"],
           resumed_steps=steps)
    assert summary["global_step"] == 4 and final["global_step"] == 4
    assert steps == [2, 3], f"the resumed run logged steps {steps}, expected it to go on at step 2"


# --------------------------------------------------------------------------- the script (CPU)
def test_gpu_check_script_is_bash_and_wired_into_make():
    assert SCRIPT.is_file()
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    help_text = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0 and "OUT_DIR" in help_text.stdout
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for extra, expected in (([], "bash experiments/gpu_check.sh"),
                            (["GPU_CHECK_OUT=/tmp/gpu out"], "bash experiments/gpu_check.sh /tmp/gpu out")):
        dry = subprocess.run(["make", "-n", "gpu-check", *extra], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
        assert dry.returncode == 0, dry.stderr
        assert expected in dry.stdout, dry.stdout


def script_output(*args: str) -> str:
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_gpu_check_bench_overrides_compose(tmp_path):
    """The benchmark the script runs: three ViT-S nets × bf16/fp32 at the four sizes."""
    from mematte.bench import model_net_configs

    args = script_output("--print-bench-args").splitlines()
    from hydra import initialize_config_dir

    try:
        cfg = compose_config("bench", args, tmp_path)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            nets = model_net_configs(cfg.models)  # as bench.py builds each model's net
    finally:
        GlobalHydra.instance().clear()
    assert cfg.device == "cuda" and cfg.name == "bench_cuda"
    assert [list(r) for r in cfg.resolutions] == [[1024, 1024], [2048, 2048], [4096, 4096], [4872, 6016]]
    precisions = {m: cfg.models[m].get("precision") for m in cfg.run_models}
    assert precisions == {
        "mematte_s": "bf16", "mematte_s_fp32": "fp32", "vitmatte_s": "bf16", "vitmatte_s_fp32": "fp32",
        "vitmatte_s_naive": "fp32", "vitmatte_s_naive_bf16": "bf16",
    }
    assert cfg.models.vitmatte_s_naive_bf16.get("tile", "missing") is None  # whole-image decoder, as the original
    assert nets["vitmatte_s_naive_bf16"] == nets["vitmatte_s_naive"]
    assert nets["mematte_s_fp32"] == nets["mematte_s"] and nets["vitmatte_s_fp32"] == nets["vitmatte_s"]
    assert nets["vitmatte_s_naive"]["backbone"]["attn_impl"] == "naive"
    assert nets["mematte_s"]["backbone"]["embed_dim"] == 384
    labels = {str(cfg.models[m].label) for m in cfg.run_models}
    assert len(labels) == 6  # one row label per model and precision
    # the caps that keep the benchmark within the script's budget
    assert cfg.point_timeout_s <= 120 and cfg.time_limit_s <= 120 and cfg.max_seconds <= 30


@pytest.mark.slow  # bench workers in fresh processes (~8 s); the full suite runs it
def test_gpu_check_bench_report_from_an_interrupted_run(tmp_path, monkeypatch):
    """The script's fallback: tables from the finished points; the rest as timeouts."""
    helper = tmp_path / "gpu_check_helpers.py"
    helper.write_text(script_output("--print-helper"))
    results = tmp_path / "results"
    results.mkdir()
    point = {"model": "mematte_s", "height": 1024, "width": 1024, "status": "ok", "peak_bytes": 2**30,
             "baseline_bytes": 2**28, "estimate_bytes": 2**31, "weights_bytes": 2**26, "latency_s": 0.05,
             "latencies_s": [0.05], "global_tokens": [1024], "tokens": 4096, "reason": "", "device": "cuda",
             "threads": None}
    (results / "bench_cuda.jsonl").write_text(json.dumps({"fingerprint": {}, "result": point}) + "\n")
    args = [*script_output("--print-bench-args").splitlines(), f"out_dir={results}", "memory_budget_gb=100"]
    env = {**os.environ, "GPU_CHECK_REPO": str(ROOT),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(helper), "bench-report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (results / "bench_cuda.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 4
    assert [r["status"] for r in rows].count("ok") == 1
    assert {r["status"] for r in rows if r["model"] != "mematte_s" or r["height"] != "1024"} == {"timeout"}
    assert (results / "bench_cuda.md").is_file() and (results / "bench_cuda.png").is_file()


@pytest.mark.slow  # ~10-20 s: two interpreters import the whole stack
@pytest.mark.skipif(CUDA, reason="checks the early stop of a machine without CUDA")
def test_gpu_check_stops_early_without_cuda(tmp_path):
    """Set-up as on a registry-less GPU machine (a venv linked to this python's packages), then
    a clear stop, exit 2 and a summary, since torch sees no GPU here."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SETUP": "link",
           "GPU_CHECK_VENV": str(tmp_path / "venv"), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "GPU_CHECK_WHEELS": str(tmp_path / "no_wheels")}
    env.pop("OUT", None)
    env.pop("GPU_CHECK_PYTHON", None)
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "CUDA is not available" in proc.stdout
    summary = (out / "summary.md").read_text()
    assert "| setup | passed |" in summary and "CUDA unavailable" in summary
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert (out / "logs" / "setup.log").is_file() and (out / "logs" / "env.log").is_file()
