"""The benchmark harness: fresh-process points, budget and time skips, resume, reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR
from mematte.bench import (
    PointResult,
    PointSpec,
    loglog_slope,
    model_net_configs,
    predict_latency,
    reference_ratios,
    run_benchmark,
    run_point,
)

TINY_MODELS = {
    "tiny_vitmatte": {"label": "tiny ViTMatte naive", "overrides": ["backbone=vit_tiny", "router=none",
                                                                    "backbone.attn_impl=naive"],
                      "precision": "fp32", "tile": None},
    "tiny_mematte": {"label": "tiny MEMatte", "overrides": ["backbone=vit_tiny", "router=local_global",
                                                            "routing=fixed", "routing.target=0.25"]},
}


@pytest.fixture
def bench_cfg(tmp_path: Path):
    """The bench config at a tiny setting, inside an initialised compose context."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=[
            f"out_dir={tmp_path}", "name=tiny", "repeats=2", "warmup=1", "threads=1",
            "resolutions=[[64,64],[96,128]]", "reference=tiny_vitmatte",
            "slope_pixels=[4000,20000]", "extras.print_config=false",
            "paths.root_dir=.", "startup=null", "memory_runs=1",
        ])
        with open_dict(cfg):
            cfg.models = OmegaConf.create(TINY_MODELS)
            cfg.run_models = ["tiny_vitmatte", "tiny_mematte"]
        yield cfg
    GlobalHydra.instance().clear()


def test_loglog_slope_and_latency_extrapolation():
    assert loglog_slope([(1, 3), (10, 30), (100, 300)]) == pytest.approx(1.0)
    assert loglog_slope([(1, 1), (4, 16)]) == pytest.approx(2.0)
    assert loglog_slope([(5, 1)]) is None
    one = [PointResult("m", 100, 100, "ok", latency_s=2.0)]
    assert predict_latency([], 10**6) is None
    assert predict_latency(one, 4 * 10**4) == pytest.approx(2.0 * 4**2)  # pessimistic quadratic
    two = one + [PointResult("m", 200, 200, "ok", latency_s=8.0)]  # linear in pixels
    assert predict_latency(two, 16 * 10**4) == pytest.approx(32.0)
    # a skipped point does not count as a measurement
    assert predict_latency(two + [PointResult("m", 400, 400, "skipped")], 10**6) == pytest.approx(
        8.0 * 10**6 / 4e4)
    # sub-linear timings (start-up dominated) extrapolate linearly, never below
    flat = one + [PointResult("m", 200, 200, "ok", latency_s=2.5)]
    assert predict_latency(flat, 16 * 10**4) == pytest.approx(2.5 * 4)


def test_reference_ratio_falls_back_to_the_estimate_of_a_skipped_reference():
    results = [
        PointResult("ref", 10, 10, "ok", peak_bytes=100, latency_s=4.0),
        PointResult("ref", 20, 20, "skipped", estimate_bytes=1100, weights_bytes=100),
        PointResult("m", 10, 10, "ok", peak_bytes=25, latency_s=1.0),
        PointResult("m", 20, 20, "ok", peak_bytes=50, latency_s=2.0),
    ]
    ratios = reference_ratios(results, "ref")
    assert ratios[("m", 10, 10)] == (0.25, 0.25, False)
    assert ratios[("m", 20, 20)] == (0.05, None, True)  # 50 / (1100 − 100 weights)


def test_run_point_measures_memory_and_latency_in_process():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = model_net_configs(OmegaConf.create(TINY_MODELS))
    GlobalHydra.instance().clear()
    spec = PointSpec(model="tiny_mematte", net_config=configs["tiny_mematte"], height=64, width=96,
                     repeats=2, warmup=1, threads=1)
    result = run_point(spec)
    # > 0 even in a test process full of freed memory (PeakMemory hands it back first)
    assert result.status == "ok" and result.peak_bytes > 0 and result.latency_s > 0
    assert len(result.latencies_s) == 2
    # 4×6 tokens, top 25 % of them through global attention in each of the routed blocks
    assert result.tokens == 24 and result.global_tokens == [6] * len(result.global_tokens)


def test_a_fast_point_reports_the_median_peak_of_fresh_processes(bench_cfg, tmp_path: Path, monkeypatch):
    """Points up to memory_runs_max_s run memory_runs − 1 more peak-only workers and report the
    median peak (with every run's peak kept and the range in the table); slower points and a
    failed extra run keep what was measured."""
    peaks = iter([300, 100, 200, 7, 50, 40, 60])
    started = []

    def fake_measure(spec, estimate, timeout):
        started.append(spec)
        latency = None if spec.memory_only else (5.0 if spec.height == 64 else 50.0)
        if spec.memory_only and spec.model == "tiny_mematte" and spec.height == 64:
            return PointResult(spec.model, spec.height, spec.width, "error", reason="worker exit 1")
        return PointResult(spec.model, spec.height, spec.width, "ok", peak_bytes=next(peaks) << 20,
                           latency_s=latency, latencies_s=[] if latency is None else [latency])

    monkeypatch.setattr("mematte.bench.measure", fake_measure)
    with open_dict(bench_cfg):
        bench_cfg.memory_runs, bench_cfg.memory_runs_max_s, bench_cfg.resume = 3, 10, False
    results = run_benchmark(bench_cfg)
    assert [[s.memory_only for s in started if (s.model, s.height) == key]
            for key in (("tiny_vitmatte", 64), ("tiny_vitmatte", 96), ("tiny_mematte", 64))] == [
        [False, True, True], [False], [False, True]]
    assert [r.peaks_bytes for r in results] == [[300 << 20, 100 << 20, 200 << 20], [7 << 20], [50 << 20],
                                                [40 << 20]]
    assert [r.peak_bytes >> 20 for r in results] == [200, 7, 50, 40]
    assert all(r.latency_s for r in results)  # the extra runs never replace the latency
    md = (tmp_path / "tiny.md").read_text()
    assert "| 200 (100–300) |" in md and "median over 3 fresh processes" in md
    rows = list(csv.DictReader((tmp_path / "tiny.csv").open()))
    assert rows[0]["peak_bytes"] == str(200 << 20) and rows[0]["peaks_bytes"].split() == [
        str(300 << 20), str(100 << 20), str(200 << 20)]


def test_a_peak_only_run_stops_after_the_first_prediction():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = model_net_configs(OmegaConf.create(TINY_MODELS))
    GlobalHydra.instance().clear()
    spec = PointSpec(model="tiny_mematte", net_config=configs["tiny_mematte"], height=64, width=96,
                     repeats=2, warmup=1, threads=1, memory_only=True)
    result = run_point(spec)
    assert result.status == "ok" and result.peak_bytes > 0
    assert result.latency_s is None and result.latencies_s == []


@pytest.mark.slow  # four fresh worker processes (~10 s of imports each)
def test_benchmark_runs_points_in_subprocesses_and_writes_reports(bench_cfg, tmp_path: Path):
    results = run_benchmark(bench_cfg)
    assert [(r.model, r.height, r.width, r.status) for r in results] == [
        ("tiny_vitmatte", 64, 64, "ok"), ("tiny_vitmatte", 96, 128, "ok"),
        ("tiny_mematte", 64, 64, "ok"), ("tiny_mematte", 96, 128, "ok"),
    ]
    for r in results:
        assert r.peak_bytes > 0 and r.latency_s > 0 and r.estimate_bytes > r.weights_bytes > 0
    rows = list(csv.DictReader((tmp_path / "tiny.csv").open()))
    assert len(rows) == 4 and rows[0]["status"] == "ok"
    md = (tmp_path / "tiny.md").read_text()
    assert "| tiny MEMatte | 128×96 | ok |" in md and "Log-log slope" in md
    assert (tmp_path / "tiny.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files

    # resume: a second run reuses every finished point (no worker starts: it would be slow)
    lines = (tmp_path / "tiny.jsonl").read_text().splitlines()
    again = run_benchmark(bench_cfg)
    assert [r.peak_bytes for r in again] == [r.peak_bytes for r in results]
    assert (tmp_path / "tiny.jsonl").read_text().splitlines() == lines


def test_points_over_budget_or_time_limit_are_skipped_not_run(bench_cfg, tmp_path: Path, monkeypatch):
    started = []
    monkeypatch.setattr("mematte.bench.measure", lambda spec, *a: started.append(spec) or PointResult(
        spec.model, spec.height, spec.width, "ok", peak_bytes=1, latency_s=10.0))
    with open_dict(bench_cfg):
        bench_cfg.memory_budget_gb = 1e-6
        bench_cfg.resume = False
    results = run_benchmark(bench_cfg)
    assert not started and {r.status for r in results} == {"skipped"}
    assert all("budget" in r.reason for r in results)

    with open_dict(bench_cfg):
        bench_cfg.memory_budget_gb = 64
        bench_cfg.time_limit_s = 15  # 10 s at 64², quadratic guess → 30 s at 96×128
    results = run_benchmark(bench_cfg)
    assert [r.status for r in results] == ["ok", "skipped", "ok", "skipped"]
    assert "time_limit_s" in results[1].reason and len(started) == 2
    md = (tmp_path / "tiny.md").read_text()
    assert "skipped: predicted" in md


def test_bf16_models_are_skipped_on_a_cpu_without_native_bf16(bench_cfg, monkeypatch):
    """Emulated bf16 (no avx512_bf16/amx_bf16) is not measured unless asked for: it is not the
    case precision=bf16 serves, and the estimate does not model oneDNN's emulation buffers."""
    started = []
    monkeypatch.setattr("mematte.bench.measure", lambda spec, *a: started.append(spec) or PointResult(
        spec.model, spec.height, spec.width, "ok", peak_bytes=1, latency_s=1.0))
    with open_dict(bench_cfg):
        bench_cfg.models.tiny_mematte.precision = "bf16"
        bench_cfg.resume = False
        bench_cfg.bf16_guard = False  # the accuracy guard is tested in test_precision
    monkeypatch.setattr("mematte.precision.cpu_bf16_supported", lambda: False)
    results = run_benchmark(bench_cfg)
    skipped = [r for r in results if r.model == "tiny_mematte"]
    assert [r.status for r in skipped] == ["skipped", "skipped"]
    assert all("no native bf16" in r.reason and r.estimate_bytes for r in skipped)
    assert {s.model for s in started} == {"tiny_vitmatte"}
    started.clear()
    with open_dict(bench_cfg):
        bench_cfg.measure_emulated_bf16 = True
    results = run_benchmark(bench_cfg)
    assert [s.precision for s in started if s.model == "tiny_mematte"] == ["bf16", "bf16"]
    started.clear()
    with open_dict(bench_cfg):
        bench_cfg.measure_emulated_bf16 = False
    monkeypatch.setattr("mematte.precision.cpu_bf16_supported", lambda: True)
    run_benchmark(bench_cfg)
    assert [s.precision for s in started if s.model == "tiny_mematte"] == ["bf16", "bf16"]


def test_address_space_guard_turns_an_oversized_point_into_oom():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = model_net_configs(OmegaConf.create(TINY_MODELS))
    GlobalHydra.instance().clear()
    # naive attention at 2048² on the tiny net needs 3 GiB per N×N matrix: over the 1 GiB slack
    spec = PointSpec(model="tiny_vitmatte", net_config=configs["tiny_vitmatte"], height=2048, width=2048,
                     repeats=1, warmup=0, threads=1, memory_limit_bytes=1)
    from mematte.bench import measure

    result = measure(spec, estimate_bytes=0, timeout_s=300)
    assert result.status == "oom", result
    assert "memory" in result.reason.lower()


def test_unknown_model_is_refused(bench_cfg):
    with open_dict(bench_cfg):
        bench_cfg.run_models = ["tiny_vitmatte", "vitmatte_xl"]
    with pytest.raises(ValueError, match="vitmatte_xl"):
        run_benchmark(bench_cfg)


def test_jsonl_survives_a_cut_line(bench_cfg, tmp_path: Path, monkeypatch):
    from mematte.bench import append_record, load_records

    fp = {"a": 1}
    path = tmp_path / "x.jsonl"
    append_record(path, fp, PointResult("m", 1, 2, "ok", peak_bytes=3))
    with path.open("a") as f:
        f.write('{"fingerprint": {"a": 1}, "result": {"mod')  # killed mid-write
    records = load_records(path, fp)
    assert list(records) == ["m@1x2"] and records["m@1x2"].peak_bytes == 3
    assert load_records(path, {"a": 2}) == {}
    assert math.isfinite(json.loads(path.read_text().splitlines()[0])["result"]["peak_bytes"])


def test_targets_are_checked_on_the_run_and_tabulated():
    from mematte.bench import check_targets, estimate_errors, targets_table

    mib = 1024**2
    results = [
        PointResult("ref", 64, 64, "ok", peak_bytes=400 * mib, latency_s=10.0, estimate_bytes=450 * mib,
                    weights_bytes=50 * mib),
        PointResult("ours", 64, 64, "ok", peak_bytes=100 * mib, latency_s=6.0, estimate_bytes=130 * mib,
                    weights_bytes=20 * mib),
    ]
    targets = OmegaConf.create([
        {"name": "mem", "kind": "memory_ratio", "model": "ours", "reference": "ref", "size": [64, 64], "max": 0.5},
        {"name": "lat", "kind": "latency_ratio", "model": "ours", "reference": "ref", "size": [64, 64], "max": 0.5},
        {"name": "peak", "kind": "peak_gib", "model": "ours", "size": [64, 64], "max": 1.0},
        {"name": "missing", "kind": "peak_gib", "model": "ours", "size": [128, 128], "max": 1.0},
        {"name": "est", "kind": "estimate_error", "max": 0.15},
        {"name": "help", "kind": "startup_s", "what": "help_s", "max": 2},
    ])
    assert estimate_errors(results) == {"ref@64x64": pytest.approx(0.0), "ours@64x64": pytest.approx(0.1)}
    checked = {t.name: t for t in check_targets(results, targets, {"help_s": 2.5})}
    assert checked["mem"].measured == pytest.approx(0.25) and checked["mem"].status == "met"
    assert checked["lat"].measured == pytest.approx(0.6) and checked["lat"].status == "not met"
    assert checked["peak"].status == "met" and checked["missing"].status == "not measured"
    assert checked["est"].measured == pytest.approx(0.1) and "ours@64x64" in checked["est"].detail
    assert checked["help"].status == "not met"
    table = targets_table(list(checked.values()))
    assert "| mem | 0.250 × | ≤ 0.5 × | met |" in table and "not measured" in table
    with pytest.raises(ValueError, match="unknown target kind"):
        check_targets(results, OmegaConf.create([{"name": "x", "kind": "speed", "max": 1}]), {})


@pytest.mark.slow  # four fresh predict.py processes
def test_startup_is_the_median_of_fresh_runs(caplog):
    """Each start writes its alpha into a new folder (a resumed run would skip the image and
    time nothing); the report is the median of the runs, each logged."""
    from mematte.bench import measure_startup

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        net_config = model_net_configs(OmegaConf.create(TINY_MODELS))["tiny_mematte"]
    GlobalHydra.instance().clear()
    with caplog.at_level("INFO", logger="mematte"):
        times = measure_startup(net_config, CONF_DIR.parent, size=64, repeats=2)
    assert set(times) == {"help_s", "first_alpha_s"}
    runs = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("start-up runs"))
    for key, median in times.items():
        samples = [float(t) for t in runs.split(f"{key} ")[1].split(";")[0].split(", ")]
        # the log rounds each run to 0.01 s: the median lies between them up to that rounding
        assert len(samples) == 2 and 0 < min(samples) - 0.005 <= median <= max(samples) + 0.005
    assert times["help_s"] < times["first_alpha_s"]
