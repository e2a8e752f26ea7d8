"""The sweep report: collecting runs, ablation tables, plots, RESULTS.md markers, CLI errors.

Fake sweep folders are built in the format ``mematte.cli.train`` writes: the config is
composed from conf/ with the job's overrides and stored resolved in ``metrics.json``, the
overrides in ``.hydra/overrides.yaml``, the unresolved config and the Hydra node (group
choices) in ``.hydra/config.yaml`` / ``.hydra/hydra.yaml``. The slow test checks that
format against a real ``train.py -m`` multirun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import ROOT, TINY_TRAIN, compose_config
from mematte import report
from mematte.bench import PointResult, write_csv

MIB = 1024**2
STAMP = "2026-01-01_00-00-00"
BLOCKS = (2, 5, 8, 11)


# --------------------------------------------------------------------------- fake runs
def fake_metrics(sad: float, keep: float | None) -> dict[str, float]:
    """Metrics as MattingModule logs them (``keep_ratio`` only for routed nets)."""
    values = {"sad": sad, "mse": sad * 10, "grad": sad * 1.5, "conn": sad * 1.1}
    if keep is not None:
        values["keep_ratio"] = keep
        values.update({f"keep_ratio/block{b}": keep * (1 + 0.1 * i) for i, b in enumerate(BLOCKS)})
    return values


def write_job(job_dir: Path, overrides: list[str], *, num: int, sad: float | None,
              test: bool = True, state: dict | None = None) -> None:
    """One Hydra job folder as train() leaves it; ``sad=None``: crashed (no metrics.json)."""
    cfg = compose_config("train", overrides, job_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hydra_node = resolved.pop("hydra")
    hydra_node["job"]["num"] = num
    hydra_dir = job_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(plain))
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra_node}))
    GlobalHydra.instance().clear()
    if state is not None:
        (job_dir / "run_state.json").write_text(json.dumps(state))
    if sad is None:
        return
    routed = resolved["model"]["backbone"]["global_block"] is not None
    keep = resolved["routing"]["target"] if routed else None
    summary = {
        "config": resolved,
        "val_untrained": fake_metrics(sad * 2, keep),
        "val_final": fake_metrics(sad + 0.5, keep),
        "train_seconds": 3.5,
        "global_step": 2,
        "resumed_from_step": None,
        "best_checkpoint": str(job_dir / "checkpoints" / "best-step000002.ckpt"),
    }
    if test:
        # with the test loop's own cost (mematte.callbacks.InferenceProfiler)
        summary["test"] = {**fake_metrics(sad, keep), "latency_s": sad / 10, "peak_mib": sad * 10}
    (job_dir / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


ROUTER_JOBS = [("none", 4.0), ("local_global", 4.5), ("local", 5.0)]
KEEP_JOBS = [(0.1, 6.0), (0.25, 5.5), (0.5, None)]  # the last one crashed


def build_runs(root: Path) -> Path:
    """Two ablation sweeps, a plain multirun folder and a stray offline W&B run under ``root``."""
    base = ["experiment=tiny_cpu"]
    router_dir = root / "ablation_router" / STAMP
    for num, (router, sad) in enumerate(ROUTER_JOBS):
        # sweep_name in the config (what a conf/sweep/* file sets), ViT-S to join the benchmark
        write_job(router_dir / str(num), ["+sweep_name=ablation_router", *base, "backbone=vit_small",
                                          f"router={router}"], num=num, sad=sad)
    # eval.py's result next to the run (cli.evaluate's payload)
    (router_dir / "1" / "eval").mkdir()
    (router_dir / "1" / "eval" / "synthetic_test.json").write_text(json.dumps({
        "checkpoint": str(router_dir / "1" / "checkpoints" / "last.ckpt"), "data": "synthetic", "split": "test",
        "region": "unknown", "num_images": 4, "metrics": fake_metrics(4.25, 0.25), "seconds": 2.0,
        "checkpoint_step": 2, "routed_inference": {}}))
    # an offline W&B run inside a job folder: the job's metrics.json is the source, not this
    inner = router_dir / "0" / "wandb" / "offline-run-20260101_000000-inner000" / "files"
    inner.mkdir(parents=True)
    (inner / "wandb-summary.json").write_text(json.dumps({"test/sad": 999.0}))

    keep_dir = root / "ablation_keep_ratio" / STAMP
    for num, (target, sad) in enumerate(KEEP_JOBS):
        state = None if sad is not None else {
            "status": "failed", "attempts": [{"step": 1, "status": "failed", "error": "RuntimeError: boom"}]}
        # no sweep_name in the config: the `+sweep=` override names the sweep
        write_job(keep_dir / str(num), [*base, "router=local_global", f"routing.target={target}"],
                  num=num, sad=sad, state=state)
        overrides_file = keep_dir / str(num) / ".hydra" / "overrides.yaml"
        overrides_file.write_text(yaml.safe_dump(["+sweep=ablation_keep_ratio", *yaml.safe_load(overrides_file.read_text())]))

    plain_dir = root / "multiruns" / STAMP
    for num, ltrm in enumerate(["conv", "mlp"]):  # no sweep name at all: grouped by folder; val only
        write_job(plain_dir / str(num), [*base, "router=local_global", f"ltrm={ltrm}"], num=num,
                  sad=3.0 + num, test=False)

    wandb_run = root / "elsewhere" / "wandb" / "offline-run-20260101_000000-abcd1234" / "files"
    wandb_run.mkdir(parents=True)
    (wandb_run / "wandb-summary.json").write_text(json.dumps(
        {"test/sad": 7.5, "test/mse": 70.0, "test/grad": 9.0, "test/conn": 8.0, "test/keep_ratio": 0.3,
         "val/sad": 8.0, "_runtime": 12.0}))
    (wandb_run / "config.yaml").write_text(yaml.safe_dump(
        {"wandb_version": 1, "_wandb": {"value": {"cli_version": "0.31.0"}},
         "sweep_name": {"value": "ablation_distill"},
         "overrides": {"value": ["+sweep=ablation_distill", "teacher.ckpt=t.ckpt"]}}))
    return root


def build_bench(out_dir: Path) -> Path:
    """experiments/results/bench_cpu.{csv,md} in bench.py's format (mematte.bench.write_csv)."""
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    points = []
    for model, mem in (("vitmatte_s", 100), ("mematte_s", 40)):
        for side in (1024, 2048):
            points.append(PointResult(model, side, side, "ok", peak_bytes=mem * MIB * (side // 1024) ** 2,
                                      baseline_bytes=500 * MIB, estimate_bytes=2 * mem * MIB,
                                      weights_bytes=MIB, latency_s=side / 1024 * (2.0 if model == "vitmatte_s" else 1.0),
                                      latencies_s=[1.0, 1.1], global_tokens=[1024] * 4, tokens=4096,
                                      device="cpu", threads=2))
    points.append(PointResult("mematte_s", 4096, 4096, "skipped", estimate_bytes=64 * 1024 * MIB,
                              reason="estimated peak 64.0 GiB > budget 10.0 GiB", device="cpu"))
    write_csv(points, results / "bench_cpu.csv")
    (results / "bench_cpu.md").write_text("# Benchmark `bench_cpu`\n\nBENCH TABLE MARKER\n")
    return results / "bench_cpu.csv"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return build_runs(tmp_path_factory.mktemp("sweeps"))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    out = tmp_path / "experiments"
    build_bench(out)
    return out


def by_sweep(runs_root: Path) -> dict[str, list[report.Run]]:
    return report.group_sweeps(report.collect_local([runs_root]))


# --------------------------------------------------------------------------- collecting
def test_collect_groups_by_sweep_and_lists_crashed_runs(runs_root):
    sweeps = by_sweep(runs_root)
    assert set(sweeps) == {"ablation_router", "ablation_keep_ratio", "ablation_distill",
                           f"{runs_root.name}/multiruns/{STAMP}"}
    assert [r.overrides["router"] for r in sweeps["ablation_router"]] == ["none", "local_global", "local"]
    crashed = [r for r in sweeps["ablation_keep_ratio"] if not r.finished]
    assert len(crashed) == 1 and crashed[0].name.endswith("ablation_keep_ratio/" + STAMP + "/2")
    assert crashed[0].status == "failed at step 1: RuntimeError: boom (no metrics.json)"
    wandb_run = sweeps["ablation_distill"][0]
    assert wandb_run.source == "wandb-offline" and wandb_run.split == "test"
    assert wandb_run.metrics["sad"] == 7.5 and wandb_run.overrides["teacher.ckpt"] == "t.ckpt"
    # the offline W&B run inside a job folder is not a run of its own
    assert all(r.metrics.get("sad") != 999.0 for group in sweeps.values() for r in group)


def test_router_table_values_and_bench_join(runs_root, out_dir):
    runs = by_sweep(runs_root)["ablation_router"]
    bench = report.read_bench_csv(out_dir / "results" / "bench_cpu.csv")
    table = report.build_table("ablation_router", runs, bench)
    assert table.setting_keys == ["router"]
    labels = [label for _, label in table.columns]
    assert labels[:5] == ["router", "SAD", "MSE", "Grad", "Conn"]
    assert "kept b2" in labels and "kept b11" in labels
    # each run's own test-time cost, then the benchmark's by architecture at a common resolution
    assert labels[-7:-3] == ["peak MiB", "latency s", "bench peak MiB @ 2048×2048", "bench latency s @ 2048×2048"]
    rows = {r["setting:router"]: r for r in table.rows}
    assert set(rows) == {"none", "local_global", "local"}
    assert rows["none"]["sad"] == 4.0 and rows["local"]["mse"] == pytest.approx(50.0)
    assert rows["none"]["keep_ratio"] == 1.0 and rows["none"]["routed"] is False
    assert rows["local_global"]["keep_ratio"] == 0.25
    assert rows["local_global"]["keep_ratio/block5"] == pytest.approx(0.275)
    # joined by architecture: ViTMatte-S and MEMatte-S rows at the largest common resolution
    assert rows["none"]["bench_model"] == "vitmatte_s" and rows["none"]["bench_peak_mib"] == pytest.approx(400)
    assert rows["local"]["bench_model"] == "mematte_s" and rows["local"]["bench_latency_s"] == pytest.approx(2.0)
    assert rows["none"]["peak_mib"] == 40.0 and rows["local"]["latency_s"] == 0.5
    md = report.table_markdown(table)
    assert "| none (default) |" not in md  # explicit override, no "(default)"
    assert "| none | 4.000 | 40.00 | 6.000 | 4.400 | 1 (no routing) |" in md
    assert "| 40 | 0.4000 | 400 | 4.000 | test | ok |" in md
    assert "each run's own test loop" in md
    assert "eval.py results" in md and "| local_global | synthetic_test | 4.250 |" in md
    assert "| 0.2500 | 0.5000 |" in md  # kept 0.25, 2.0 s / 4 images


def test_crashed_job_with_a_wandb_summary_shows_partial_metrics(tmp_path):
    job = tmp_path / "s" / "0"
    write_job(job, ["+sweep_name=s", "experiment=tiny_cpu"], num=0, sad=None,
              state={"status": "preempted", "attempts": [{"step": 40, "status": "preempted"}]})
    files = job / "wandb" / "offline-run-20260101_000000-x" / "files"
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(json.dumps({"val/sad": 2.5, "val/mse": 1.0}))
    (run,) = report.collect_local([tmp_path])
    assert not run.finished and run.status == "preempted at step 40 (no metrics.json)"
    assert run.metrics["sad"] == 2.5 and run.split == "val (partial, W&B summary)"


def test_keep_ratio_table_lists_the_crashed_job(runs_root):
    table = report.build_table("ablation_keep_ratio", by_sweep(runs_root)["ablation_keep_ratio"])
    assert table.setting_keys == ["routing.target"]
    assert [r["setting:routing.target"] for r in table.rows] == ["0.1", "0.25", "0.5"]
    crashed = table.rows[2]
    assert crashed["sad"] is None and crashed["status"].startswith("failed at step 1")
    md = report.table_markdown(table)
    assert "| 0.5 | — | — | — | — |" in md and "1 of 3 runs did not finish" in md
    assert "| 60 | 0.6000 | test | ok |" in md  # the runs' own cost, no benchmark columns
    assert "bench peak" not in md


def test_val_fallback_and_folder_grouping(runs_root):
    name = f"{runs_root.name}/multiruns/{STAMP}"
    table = report.build_table(name, by_sweep(runs_root)[name])
    assert [r["setting:ltrm"] for r in table.rows] == ["conv", "mlp"]
    assert [r["split"] for r in table.rows] == ["val", "val"]
    assert [r["sad"] for r in table.rows] == [3.5, 4.5]  # val_final = fake sad + 0.5
    assert "final validation" in report.table_markdown(table)


def test_default_values_shown_for_keys_a_job_did_not_set(tmp_path):
    for num, extra in enumerate([[], ["router=local_global"]]):
        write_job(tmp_path / "sw" / str(num), ["+sweep_name=s", "experiment=tiny_cpu", *extra], num=num, sad=1.0 + num)
    table = report.build_table("s", report.collect_local([tmp_path])[:])
    assert [r["setting:router"] for r in table.rows] == ["none (default)", "local_global"]


def test_rerun_of_a_crashed_job_supersedes_it(tmp_path):
    common = ["+sweep_name=s", "experiment=tiny_cpu"]
    write_job(tmp_path / "s" / "t1" / "0", [*common, "router=none"], num=0, sad=None,
              state={"status": "failed", "attempts": [{"step": 0, "error": "OSError: disk"}]})
    write_job(tmp_path / "s" / "t1" / "1", [*common, "router=local"], num=1, sad=2.0)
    write_job(tmp_path / "s" / "t2" / "0", [*common, "router=none"], num=0, sad=1.0)
    table = report.build_table("s", report.group_sweeps(report.collect_local([tmp_path]))["s"])
    assert sorted(r["setting:router"] for r in table.rows) == ["local", "none"]
    assert all(r["status"] == "ok" for r in table.rows)
    assert any("superseded" in n for n in table.notes)


# --------------------------------------------------------------------------- outputs
def test_write_report_tables_csv_plots_and_results(runs_root, out_dir):
    runs = report.collect_local([runs_root])
    outputs = report.write_report(runs, out_dir, [out_dir / "results" / "bench_cpu.csv"], sources=["test"])
    report_dir = out_dir / "report"
    for stem in ("ablation_router", "ablation_keep_ratio", "ablation_distill", f"{runs_root.name}_multiruns_{STAMP}"):
        assert (report_dir / f"{stem}.md").is_file() and (report_dir / f"{stem}.csv").is_file()
        assert (report_dir / f"{stem}_sad_vs_keep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report_dir / "memory_vs_resolution.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(report_dir.glob(".*tmp*"))  # atomic writes leave no temp files

    rows = report.read_table_csv(report_dir / "ablation_router.csv")
    assert [r["router"] for r in rows] == ["none", "local_global", "local"]
    assert [float(r["sad"]) for r in rows] == [4.0, 4.5, 5.0]
    assert float(rows[1]["keep_ratio/block11"]) == pytest.approx(0.325)
    assert rows[0]["bench_model"] == "vitmatte_s" and float(rows[0]["bench_peak_mib"]) == 400.0
    crashed = report.read_table_csv(report_dir / "ablation_keep_ratio.csv")[2]
    assert crashed["sad"] == "" and crashed["status"].startswith("failed")

    text = outputs.results_md.read_text()
    assert text.startswith(report.RESULTS_TEMPLATE)
    for section in ("### ablation_router", "### ablation_keep_ratio", "### ablation_distill", "## Benchmark"):
        assert section in text
    assert "BENCH TABLE MARKER" in text and "### Benchmark `bench_cpu`" in text  # included, demoted
    assert "](report/ablation_router_sad_vs_keep.png)" in text
    assert "](report/memory_vs_resolution.png)" in text


def test_results_md_keeps_hand_written_text_and_is_idempotent(runs_root, out_dir):
    before = "# My results\n\nHand-written intro.\n\n"
    after = "\n\n## Discussion\n\nKeep me — exactly.  \n"
    path = out_dir / "RESULTS.md"
    path.write_text(before + report.BEGIN_MARKER + "\nstale generated text\n" + report.END_MARKER + after)
    runs = report.collect_local([runs_root])
    first = report.write_report(runs, out_dir, [out_dir / "results" / "bench_cpu.csv"], sources=["x"])
    text = path.read_text()
    assert first.results_changed and "stale generated text" not in text
    assert text.startswith(before + report.BEGIN_MARKER + "\n")
    assert text.endswith(report.END_MARKER + after)
    snapshot = path.read_bytes()
    second = report.write_report(runs, out_dir, [out_dir / "results" / "bench_cpu.csv"], sources=["x"])
    assert not second.results_changed and path.read_bytes() == snapshot


def test_markers_appended_when_missing_and_bad_markers_refused(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Notes\nno markers here")
    assert report.update_results_file(path, "GEN")
    assert path.read_text() == f"# Notes\nno markers here\n\n{report.BEGIN_MARKER}\nGEN\n{report.END_MARKER}\n"
    assert not report.update_results_file(path, "GEN")
    assert report.update_results_file(path, "GEN2")
    assert path.read_text().startswith("# Notes\nno markers here\n\n") and "GEN2" in path.read_text()
    bad = f"x\n{report.END_MARKER}\n{report.BEGIN_MARKER}\n"
    path.write_text(bad)
    with pytest.raises(report.ReportError, match="RESULTS.md: expected one"):
        report.update_results_file(path, "GEN")
    assert path.read_text() == bad


# --------------------------------------------------------------------------- W&B API
class FakeApi:
    """The slice of ``wandb.Api`` the report uses."""

    def __init__(self, runs=None, error: Exception | None = None):
        self._runs, self.error, self.calls = runs or [], error, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        if self.error:
            raise self.error
        return [r for r in self._runs if not filters or r.group in filters["group"]["$in"]]


def api_run(name, group, router, sad, state="finished"):
    return SimpleNamespace(
        name=name, id=name, group=group, state=state, url=f"https://wandb.ai/e/p/runs/{name}",
        created_at=f"2026-01-01T00:00:0{name[-1]}",
        config={"overrides": ["+sweep=ablation_router", f"router={router}"], "_wandb": {}},
        summary={"test/sad": sad, "test/mse": 1.0, "test/grad": 2.0, "test/conn": 3.0, "val/sad": sad + 1},
    )


def test_wandb_api_runs_filtered_by_group(runs_root):
    api = FakeApi([api_run("r1", "ablation_router", "none", 1.0), api_run("r2", "ablation_router", "local", 2.0),
                   api_run("r3", "ablation_router", "se", 0.0, state="crashed"), api_run("r4", "other", "none", 9.0)])
    runs = report.collect_runs([runs_root], "e/p", ["ablation_router"], api=api)
    assert api.calls == [("e/p", {"group": {"$in": ["ablation_router"]}})]
    assert [r.source for r in runs] == ["wandb"] * 3
    table = report.build_table("ablation_router", runs)
    assert [r["setting:router"] for r in table.rows] == ["none", "local", "se"]
    assert [r["sad"] for r in table.rows] == [1.0, 2.0, 0.0]
    assert table.rows[2]["status"] == "crashed (W&B state)"


def test_wandb_unreachable_or_offline_falls_back_to_local(runs_root, monkeypatch):
    runs = report.collect_runs([runs_root], "e/p", ["ablation_router"], api=FakeApi(error=ConnectionError("no net")))
    assert {r.source for r in runs} == {"hydra"} and len(runs) == 3
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.collect_wandb("e/p") is None  # never touches the network offline


# --------------------------------------------------------------------------- CLI
def test_cli_end_to_end_and_errors(runs_root, out_dir, tmp_path, capsys):
    assert report.main(["--runs", str(runs_root), "--out", str(out_dir), "--group", "ablation_router"]) == 0
    out = capsys.readouterr().out
    assert "ablation_router: 3/3 runs finished" in out and "RESULTS.md updated" in out
    assert "### ablation_keep_ratio" not in (out_dir / "RESULTS.md").read_text()
    assert "vitmatte_s" in (out_dir / "report" / "ablation_router.csv").read_text()  # bench found by default

    missing = tmp_path / "nope"
    assert report.main(["--runs", str(missing), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert f"runs folder {missing} does not exist" in err and "+sweep=" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["--runs", str(empty), "--out", str(out_dir)]) == 2
    assert f"no training runs under {empty}" in capsys.readouterr().err
    assert report.main(["--runs", str(runs_root), "--out", str(out_dir), "--bench", str(tmp_path / "b.csv")]) == 2
    assert "bench.py" in capsys.readouterr().err
    assert report.main(["--runs", str(runs_root), "--out", str(out_dir), "--group", "nosuch"]) == 2
    assert "found sweeps: ablation_distill" in capsys.readouterr().err


def test_default_roots_report_named_sweeps_only(runs_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report.main(["--out", "experiments"]) == 2
    assert "none of logs/train/multiruns, logs/sweeps exists" in capsys.readouterr().err
    multiruns = tmp_path / "logs" / "train" / "multiruns"
    for sweep in ("ablation_router", "multiruns"):  # a named sweep and a plain multirun
        shutil.copytree(runs_root / sweep, multiruns / sweep)
    assert report.main(["--out", "experiments"]) == 0
    assert "ablation_router: 3/3" in capsys.readouterr().out
    assert [p.name for p in sorted((tmp_path / "experiments" / "report").glob("*.csv"))] == ["ablation_router.csv"]
    shutil.rmtree(multiruns / "ablation_router")
    assert report.main(["--out", "experiments"]) == 2
    assert "none of a named sweep" in capsys.readouterr().err


def test_demo_sweeps_render(tmp_path):
    root = report.write_demo_sweeps(tmp_path / "demo")
    outputs = report.write_report(report.collect_local([root]), tmp_path / "out", bench_csvs=[])
    assert set(outputs.tables) == {"demo_router", "demo_keep_ratio"}
    assert sum(r["status"] != "ok" for r in outputs.tables["demo_keep_ratio"].rows) == 1


# --------------------------------------------------------------------------- real runs (slow)
@pytest.mark.slow
def test_report_on_a_real_multirun(tmp_path):
    """Two real tiny trainings (``train.py -m router=none,local_global``), then the report CLI."""
    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in TINY_TRAIN if not o.startswith("logger=")]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "experiment=tiny_cpu", *overrides, "logger=[csv,wandb]",
         "router=none,local_global", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = tmp_path / "experiments"
    proc = subprocess.run([sys.executable, "-m", "mematte.report", "--runs", str(sweep_dir), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = report.read_table_csv(out / "report" / "sweep.csv")
    assert [r["router"] for r in rows] == ["none", "local_global"]
    assert all(r["status"] == "ok" and r["split"] == "test" and float(r["sad"]) >= 0 for r in rows)
    assert rows[0]["keep_ratio"] == "1.0" and 0 <= float(rows[1]["keep_ratio"]) <= 1
    assert rows[1]["keep_ratio/block2"] != ""
    assert (out / "report" / "sweep_sad_vs_keep.png").is_file()
    assert "### sweep" in (out / "RESULTS.md").read_text()
