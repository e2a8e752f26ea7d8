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
    assert labels[:6] == ["router", "seeds", "SAD", "MSE", "Grad", "Conn"]
    assert "kept (used)" in labels and not any(label.startswith("kept b") for label in labels)
    # each run's own test-time cost, then the benchmark's by architecture at a common resolution
    assert labels[-7:-3] == ["peak MiB", "latency s", "bench peak MiB @ 2048×2048", "bench latency s @ 2048×2048"]
    rows = {r["setting:router"]: r for r in table.rows}
    assert set(rows) == {"none", "local_global", "local"}
    assert rows["none"]["sad"] == 4.0 and rows["local"]["mse"] == pytest.approx(50.0)
    assert rows["none"]["keep_ratio"] == 1.0 and rows["none"]["routed"] is False
    assert rows["local_global"]["keep_ratio"] == 0.25 and rows["local_global"]["n"] == 1
    # per-block kept shares moved to the per-block table (older runs: the used share only)
    assert table.blocks is not None and table.blocks.shown == ["keep_ratio"] and table.blocks.blocks == list(BLOCKS)
    (block_row,) = [r for r in table.blocks.rows if r["setting:router"] == "local_global"]
    assert block_row["stats"][("keep_ratio", 5)].mean == pytest.approx(0.275)
    assert "none" not in [r["setting:router"] for r in table.blocks.rows]  # not routed
    # joined by architecture: ViTMatte-S and MEMatte-S rows at the largest common resolution
    assert rows["none"]["bench_model"] == "vitmatte_s" and rows["none"]["bench_peak_mib"] == pytest.approx(400)
    assert rows["local"]["bench_model"] == "mematte_s" and rows["local"]["bench_latency_s"] == pytest.approx(2.0)
    assert rows["none"]["peak_mib"] == 40.0 and rows["local"]["latency_s"] == 0.5
    md = report.table_markdown(table)
    assert "| none (default) |" not in md  # explicit override, no "(default)"
    assert "| none | 1 | 4.000 ±— | 40.00 ±— | 6.000 ±— | 4.400 ±— | 1 (no routing) |" in md
    assert "| 40 ±— | 0.4000 ±— | 400 | 4.000 | test | ok |" in md
    assert "Per-block routing" in md and "| local_global | 1 | 0.25±— | 0.28±— | 0.30±— | 0.33±— |" in md
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
    assert "| 0.5 | 0 | — | — | — | — |" in md and "1 of 3 runs did not finish" in md
    assert "| 60 ±— | 0.6000 ±— | test | ok |" in md  # the runs' own cost, no benchmark columns
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
    assert [float(r["sad_mean"]) for r in rows] == [4.0, 4.5, 5.0]
    assert [r["sad_std"] for r in rows] == ["", "", ""] and [r["n"] for r in rows] == ["1", "1", "1"]
    blocks = report.read_table_csv(report_dir / "ablation_router_blocks.csv")
    assert float([b for b in blocks if b["router"] == "local_global" and b["block"] == "11"][0]["keep_ratio_mean"]) \
        == pytest.approx(0.325)
    assert rows[0]["bench_model"] == "vitmatte_s" and float(rows[0]["bench_peak_mib"]) == 400.0
    crashed = report.read_table_csv(report_dir / "ablation_keep_ratio.csv")[2]
    assert crashed["sad_mean"] == "" and crashed["n"] == "0" and crashed["status"].startswith("failed")

    text = outputs.results_md.read_text()
    assert text.startswith(report.RESULTS_TEMPLATE)
    for section in ("### ablation_router", "### ablation_keep_ratio", "### ablation_distill", "## Benchmark",
                    "### Paper claims", "### Learning curves"):
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
    assert [p.name for p in sorted((tmp_path / "experiments" / "report").glob("*.csv"))] == [
        "ablation_router.csv", "ablation_router_blocks.csv", "claims.csv"]
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
    assert all(r["status"] == "ok" and r["split"] == "test" and float(r["sad_mean"]) >= 0 for r in rows)
    assert rows[0]["keep_ratio_mean"] == "1.0" and 0 <= float(rows[1]["keep_ratio_mean"]) <= 1
    blocks = report.read_table_csv(out / "report" / "sweep_blocks.csv")
    assert {b["block"] for b in blocks} and all(b["router"] == "local_global" for b in blocks)
    assert (out / "report" / "sweep_sad_vs_keep.png").is_file()
    assert "### sweep" in (out / "RESULTS.md").read_text()


# =========================================================================== seeds, references, claims, curves
# Light fabricated job folders (no Hydra composition): what the report reads of a train.py job
# of the seed-axis protocol (`seed=1,2` in every sweep), with the NEW routing statistics,
# test_rules and csv/metrics.csv.
SYNTH = {split: {"_target_": "mematte.data.synthetic.SyntheticMattingEvalSet", "num_samples": 8}
         for split in ("val_set", "test_set")}


def seed_job(root: Path, sweep: str, num: int, option: str, seed: int, sad: float | None, *,
             routed: bool = True, rules: dict | None = None, stats: dict | None = None, test: bool = True,
             selection: str = "gumbel", inference: str = "argmax", keep: float = 0.25, data: str = "synthetic",
             curves: list[dict] | None = None, mtime: float | None = None, folder: str = STAMP) -> Path:
    """One job of ``sweep`` (``option`` = its override, e.g. ``router=local``) with ``seed``; ``sad=None``: crashed."""
    job = root / f"{sweep}_{folder}" / str(num)
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"+sweep={sweep}", "experiment=tiny_sweep", option, f"seed={seed}", "init_from=t.ckpt"]))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"num": num}, "runtime": {"choices": {"data": data}}}}))
    if sad is None:
        (job / "run_state.json").write_text(json.dumps(
            {"status": "failed", "attempts": [{"step": 3, "status": "failed", "error": "RuntimeError: boom"}]}))
        return job
    block = {"selection": selection, "inference": inference, "keep_ratio": keep, "max_tokens": None} if routed else None
    config = {"task_name": "train", "sweep_name": sweep, "seed": seed, "data": SYNTH,
              "model": {"backbone": {"embed_dim": 192, "global_block": block}}}
    metrics = {"sad": sad, "mse": sad / 10, "grad": sad * 2, "conn": sad * 3, **(stats or {})}
    summary = {"config": config, "val_final": {**metrics, "sad": sad + 1}, "train_seconds": 1.0, "global_step": 15}
    if test:
        summary["test"] = metrics
    if rules:
        summary["test_rules"] = rules
    (job / "metrics.json").write_text(json.dumps(summary))
    if curves is not None:
        keys = list(dict.fromkeys(k for row in curves for k in row))
        lines = [",".join(keys)] + [",".join("" if row.get(k) is None else str(row[k]) for k in keys) for row in curves]
        (job / "csv").mkdir(exist_ok=True)
        (job / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    if mtime is not None:
        os.utime(job / "metrics.json", (mtime, mtime))
    return job


def baseline_file(root: Path, name: str, split: str, sad: float, data: str = "synthetic", images: int = 8) -> Path:
    path = root / f"{name}_{split}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"baseline": name, "checkpoint": None, "data": data, "split": split,
                                "num_images": images, "metrics": {"sad": sad, "mse": 1.0, "grad": 2.0, "conn": 3.0,
                                                                  "latency_s": 0.01}}))
    return path


def teacher_dir(root: Path, test_sad: float | None = 3.0) -> Path:
    job = root / "teacher"
    (job / "csv").mkdir(parents=True)
    config = {"task_name": "train", "seed": 42, "data": SYNTH, "model": {"backbone": {"embed_dim": 192,
                                                                                       "global_block": None}}}
    summary = {"config": config, "val_final": {"sad": 3.5, "mse": 0.3, "grad": 7.0, "conn": 9.0}}
    if test_sad is not None:
        summary["test"] = {"sad": test_sad, "mse": 0.3, "grad": 6.0, "conn": 9.0}
    (job / "metrics.json").write_text(json.dumps(summary))
    (job / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/sad\n0,0,,9.0\n0,9,0.5,\n0,30,,5.0\n1,60,0.2,nan\n1,60,,3.5\n")
    return job


def table_of(root: Path, sweep: str, **kwargs) -> report.Table:
    return report.build_table(sweep, report.group_sweeps(report.collect_local([root]))[sweep], **kwargs)


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path):
    sweep = "ablation_router"
    for num, (seed, sad) in enumerate([(1, 1.0), (2, 2.0), (3, 4.0)]):
        seed_job(tmp_path, sweep, num, "router=local_global", seed, sad,
                 stats={"keep_ratio": 0.1 * seed, "p_global_std": 0.01 * seed})
    seed_job(tmp_path, sweep, 3, "router=local", 1, 5.0)  # one seed only
    seed_job(tmp_path, sweep, 4, "router=local", 2, None)  # its second seed crashed
    # a true duplicate (same setting AND seed) from an older launch: the newest finished one counts
    seed_job(tmp_path, sweep, 0, "router=local_global", 1, 100.0, folder="1999-01-01_00-00-00", mtime=1.0)
    table = table_of(tmp_path, sweep)
    assert table.setting_keys == ["router"]  # the seed is not a setting
    rows = {r["setting:router"]: r for r in table.rows}
    assert list(rows) == ["local_global", "local"]
    lg, local = rows["local_global"], rows["local"]
    assert lg["n"] == 3 and sorted(lg["seeds"]) == ["1", "2", "3"]
    assert lg["sad"] == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    # sample std (ddof 1): deviations -4/3, -1/3, 5/3 → (16 + 1 + 25) / 9 / 2 = 7/3
    assert lg["sad_std"] == pytest.approx((7 / 3) ** 0.5)
    assert lg["keep_ratio"] == pytest.approx(0.2) and lg["keep_ratio_std"] == pytest.approx(0.1)
    assert any("superseded" in n and "seed 1" in n for n in table.notes)
    # one seed: no made-up spread; the crashed seed is listed, not averaged
    assert local["n"] == 1 and local["sad"] == 5.0 and local["sad_std"] is None
    assert local["status"].startswith("1 of 2 ok; seed 2: failed at step 3")
    md = report.table_markdown(table)
    assert "| local_global | 3 | 2.3 ± 1.5 |" in md
    assert "| local | 1 | 5.000 ±— |" in md and "± 0" not in md.split("| local |")[1].split("\n")[0]
    path = report.write_table_csv(table, tmp_path / "t.csv")
    csv_rows = report.read_table_csv(path)
    assert {"sad_mean", "sad_std", "n", "seeds"} <= set(csv_rows[0])
    assert float(csv_rows[0]["sad_std"]) == pytest.approx((7 / 3) ** 0.5) and csv_rows[0]["n"] == "3"
    assert csv_rows[1]["sad_std"] == "" and csv_rows[1]["n"] == "1" and csv_rows[1]["seeds"] == "1"


def test_routing_columns_rules_and_per_block_table(tmp_path):
    sweep = "ablation_router"
    for seed, shift in ((1, 0.0), (2, 0.2)):
        stats = {"keep_ratio": 0.01, "keep_ratio_argmax": 0.01 + shift, "keep_ratio_expected": 0.25,
                 "p_global_std": 0.02, "enrichment_argmax": float("nan"), "enrichment_expected": 1.5}
        for b, f in ((2, 1.0), (5, 2.0)):
            stats.update({f"keep_ratio_argmax/block{b}": (0.1 + shift) * f, f"keep_ratio_expected/block{b}": 0.25,
                          f"p_global_std/block{b}": 0.01 * f, f"enrichment_argmax/block{b}": 1.0 + seed})
        rules = {"argmax": {"sad": 2.0 + shift, "mse": 0.2}, "expected": {"sad": 1.0 + shift, "mse": 0.1}}
        seed_job(tmp_path, sweep, seed, "router=local_global", seed, 2.0 + shift, stats=stats, rules=rules)
    seed_job(tmp_path, sweep, 0, "router=none", 1, 1.5, routed=False)
    table = table_of(tmp_path, sweep)
    labels = [label for _, label in table.columns]
    assert labels[:8] == ["router", "seeds", "SAD", "MSE", "Grad", "Conn", "SAD argmax", "SAD expected"]
    assert labels[8:14] == ["kept (used)", "kept argmax", "kept expected", "p std", "enrichment argmax",
                            "enrichment expected"]
    assert labels[-3:] == ["metrics of", "status", "runs"]
    lg = next(r for r in table.rows if r["setting:router"] == "local_global")
    assert lg["expected/sad"] == pytest.approx(1.1) and lg["argmax/sad_std"] == pytest.approx(0.2 / 2 ** 0.5)  # ddof 1
    assert lg["enrichment_argmax"] is None  # NaN in every seed: no value, not 0
    # which decisions the SAD columns use, read from the config
    assert any("argmax (p(global) ≥ 0.5) for local_global" in n and "no routing" in n for n in table.notes)
    blocks = table.blocks
    assert blocks.blocks == [2, 5] and blocks.shown == list(report.tables.BLOCK_STATS)
    (row,) = blocks.rows  # the routed setting only
    assert row["stats"][("keep_ratio_argmax", 5)].mean == pytest.approx(0.4)
    assert row["stats"][("keep_ratio_argmax", 5)].std == pytest.approx(0.4 / 2 ** 0.5)  # 0.2, 0.6
    assert row["stats"][("enrichment_argmax", 2)].mean == pytest.approx(2.5)
    md = report.block_markdown(blocks)
    assert "kept argmax / kept expected / p std / enrichment argmax" in md
    assert "| local_global | 2 | 0.20±0.1 / 0.25±0 / 0.010±0 / 2.5±0.7 | 0.40±0.3 / 0.25±0 / 0.020±0 / 2.5±0.7 |" in md
    out = report.write_block_csv(blocks, tmp_path / "b.csv")
    lines = report.read_table_csv(out)
    assert [(r["router"], r["block"]) for r in lines] == [("local_global", "2"), ("local_global", "5")]
    assert float(lines[1]["keep_ratio_argmax_mean"]) == pytest.approx(0.4) and lines[0]["n"] == "2"


def test_fixed_topk_rule_is_named(tmp_path):
    for seed in (1, 2):
        seed_job(tmp_path, "ablation_topk_keep", seed, "routing.target=0.1", seed, 3.0, selection="topk", keep=0.1)
    table = table_of(tmp_path, "ablation_topk_keep")
    assert any("fixed top-K (0.1 of each image's tokens)" in n for n in table.notes)


def test_baseline_rows_only_for_matching_data_and_split(tmp_path):
    runs, bases = tmp_path / "runs", tmp_path / "baselines"
    for seed in (1, 2):
        seed_job(runs, "ablation_router", seed, "router=local_global", seed, 2.0 + seed)
        seed_job(runs, "ablation_distill", seed, "module.distill_weight=1.0", seed, 2.0, test=False)  # val only
    baseline_file(bases, "closed_form", "test", 4.0)
    baseline_file(bases, "closed_form", "val", 4.5)
    baseline_file(bases, "knn", "test", 6.0, images=32)  # other images than the runs' 8
    baseline_file(bases, "lkm", "test", 5.0, data="composition1k")
    (bases / "junk").mkdir()
    (bases / "junk" / "metrics.json").write_text(json.dumps({"checkpoint": "x.ckpt", "metrics": {"sad": 1}}))
    found, _ = report.read_baselines([bases])
    assert [(b.name, b.split, b.data) for b in found] == [
        ("closed_form", "test", "synthetic"), ("closed_form", "val", "synthetic"), ("knn", "test", "synthetic"),
        ("lkm", "test", "composition1k")]
    test_table = table_of(runs, "ablation_router", baselines=found)
    assert [r["label"] for r in test_table.references] == ["closed-form (training-free)", "KNN (training-free) †"]
    assert test_table.references[0]["sad"] == 4.0 and test_table.references[0]["n"] is None
    assert any("KNN (training-free) scored 32 test images, these runs 8" in n for n in test_table.notes)
    md = report.table_markdown(test_table)
    assert "| *closed-form (training-free)* | — | 4.000 | 1.000 | 2.000 | 3.000 |" in md
    val_table = table_of(runs, "ablation_distill", baselines=found)
    assert [(r["label"], r["sad"]) for r in val_table.references] == [("closed-form (training-free)", 4.5)]
    # baselines are no training runs
    assert all(r.sweep != "closed_form_test" for r in report.collect_local([tmp_path]))


def test_teacher_row_and_missing_test_metrics(tmp_path):
    for seed in (1, 2):
        seed_job(tmp_path / "runs", "ablation_router", seed, "router=local_global", seed, 2.0)
    teacher = report.read_teacher(teacher_dir(tmp_path / "a"))
    table = table_of(tmp_path / "runs", "ablation_router", teacher=teacher)
    (row,) = table.references
    assert row["label"] == "ViTMatte teacher" and row["sad"] == 3.0 and row["keep_ratio"] == 1.0
    untested = report.read_teacher(teacher_dir(tmp_path / "b", test_sad=None))
    table = table_of(tmp_path / "runs", "ablation_router", teacher=untested)
    assert not table.references and any("has no test metrics" in n for n in table.notes)


def test_verdict_rule():
    def stat(mean, std, n=2):
        return report.Stat(mean, std, n)

    assert report.verdict(stat(1.0, 0.1), stat(2.0, 0.2)) == "holds"  # gap 1.0 > 0.3
    assert report.verdict(stat(2.0, 0.1), stat(1.0, 0.2)) == "reversed"
    assert report.verdict(stat(1.0, 0.4), stat(1.5, 0.2)) == "does not separate"  # gap 0.5 < 0.6
    assert report.verdict(stat(1.0, 0.0, 1), stat(2.0, 0.1)) == "n/a"  # one seed
    assert report.verdict(None, stat(2.0, 0.1)) == "n/a"
    assert report.Stat.of([1.0, 3.0]) == report.Stat(2.0, 2 ** 0.5, 2)


def test_claims_table(tmp_path):
    sides = {"local_global": [1.0, 1.1], "local": [2.0, 2.1], "small": [0.5, 0.6], "tiny": [1.0, 1.2], "se": [3.0]}
    num = 0
    for router, sads in sides.items():
        for seed, sad in enumerate(sads, start=1):
            rules = None
            if router in ("local_global", "local"):  # rescored under both rules
                rules = {"argmax": {"sad": sad}, "expected": {"sad": sad + (5.0 if router == "local_global" else 0)}}
            seed_job(tmp_path, "ablation_router", num, f"router={router}", seed, sad, rules=rules)
            num += 1
    for seed in (1, 2):  # kept-share sweep (fixed top-K): SAD falls as the share rises
        for i, (target, sad) in enumerate([(0.1, 4.0), (0.25, 3.0), (0.5, 2.5), (1.0, 1.0)]):
            seed_job(tmp_path, "ablation_topk_keep", 10 * seed + i, f"routing.target={target}", seed,
                     sad + 0.01 * seed, selection="topk", keep=target, stats={"keep_ratio": target})
        for i, (target, sad) in enumerate([(0.1, 2.0), (0.25, 1.0), (0.5, 1.5), (0.75, 1.9)]):
            seed_job(tmp_path, "ablation_keep_ratio", 10 * seed + i, f"routing.target={target}", seed, sad + 0.1 * seed)
        for i, (ltrm, sad) in enumerate([("conv", 1.0), ("zero", 1.5), ("mlp", 0.9)]):  # no ablation_no_ltrm
            seed_job(tmp_path, "ablation_ltrm", 10 * seed + i, f"ltrm={ltrm}", seed, sad + 0.05 * seed)
    tables = {name: report.build_table(name, group)
              for name, group in report.group_sweeps(report.collect_local([tmp_path])).items()}
    claims = report.evaluate_claims(tables)
    ltrm = [(c.sweep, c.b, c.informative, c.verdict) for c in claims.comparisons if c.number == "2"]
    # claim 2 from ablation_ltrm; the other variants follow as informative rows, zero not twice
    assert ltrm == [("ablation_ltrm", "zero", False, "holds"), ("ablation_ltrm", "mlp", True, "reversed")]
    got = {(c.b, c.rule): c for c in claims.comparisons if c.number == "1"}
    assert got[("local", "argmax")].verdict == "holds"
    assert got[("local", "expected")].verdict == "reversed"  # 6.05 vs 2.05 under the expected rule
    # small/tiny were not rescored: their own test SAD, marked "as run", under each rule
    assert got[("small", "argmax")].verdict == "reversed" and got[("small", "argmax")].b_note == "as run"
    assert got[("tiny", "argmax")].verdict == "does not separate"
    assert got[("se", "argmax")].verdict == "n/a" and "fewer than 2 seeds" in got[("se", "argmax")].note
    assert got[("random", "argmax")].verdict == "n/a" and "no router=random row" in got[("random", "argmax")].note
    assert got[("local", "argmax")].a_stat.mean == pytest.approx(1.05)
    # sweeps that were not run: n/a, not dropped
    distill = [c for c in claims.comparisons if c.number == "4"]
    assert [c.verdict for c in distill] == ["n/a"] and "no ablation_distill runs" in distill[0].note
    trends = {t.sweep: t for t in claims.trends}
    topk = trends["ablation_topk_keep"]
    assert topk.rule == "as run (fixed top-K)" and topk.monotonic == "yes" and topk.ends.verdict == "holds"
    batr = trends["ablation_keep_ratio"]
    assert batr.monotonic.startswith("no (SAD does not fall at 0.25→0.5, 0.5→0.75")
    assert batr.ends.verdict == "does not separate"  # 0.75: 1.95 ± 0.07 vs 0.1: 2.05 ± 0.07
    # paired by seed: local_global − local = 1.0 − 2.0 (seed 1), 1.1 − 2.1 (seed 2)
    assert got[("local", "argmax")].paired == pytest.approx([-1.0, -1.0])
    assert got[("tiny", "argmax")].paired == pytest.approx([0.0, -0.1])  # 1.0−1.0, 1.1−1.2
    assert got[("se", "argmax")].paired == pytest.approx([-2.0])  # se ran seed 1 only
    assert report.paired_text([0.0, -0.1]) == "−0.050 ± 0.071 (1/2 A)".replace("−", "-")
    assert topk.ends.paired == pytest.approx([-3.0, -3.0])  # 1.0 vs 0.1, seed by seed
    md = report.claims_markdown(claims)
    assert "exceeds std(A) + std(B)" in md and "| 1 | the local-global router beats local | ablation_router | " \
        "argmax | local_global: 1.050 ± 0.071 (n=2) | local: 2.050 ± 0.071 (n=2) | -1.000 ± 0 (2/2 A) | **holds** |" in md
    assert "| 5 | accuracy rises with the kept share (fixed top-K) | ablation_topk_keep | as run (fixed top-K) | " \
        "0.1: 4.0150 ± 0.0071 (0.1000); 0.25: 3.0150 ± 0.0071 (0.2500);" in md
    path = report.write_claims_csv(claims, tmp_path / "claims.csv")
    assert "holds" in path.read_text() and "reversed" in path.read_text()


def test_learning_curves_written(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        curve = [{"step": 0, "train/loss": 1.0}]
        curve += [{"step": s, "val/sad": 5 - s / 10, "val/keep_ratio_argmax": 0.01 * s * seed,
                   "val/keep_ratio_expected": 0.25, "val/p_global_std": 0.001 * s,
                   "val/keep_ratio_argmax/block2": 0.02 * s, "val/p_global_std/block2": 0.002 * s,
                   "val/keep_ratio_argmax/block5": 0.01 * s} for s in (5, 10, 15)]
        seed_job(runs, "ablation_router", seed, "router=local_global", seed, 2.0, curves=curve)
    bases = tmp_path / "baselines"
    baseline_file(bases, "closed_form", "test", 4.0)
    baseline_file(bases, "closed_form", "val", 4.5)
    out = report.write_report(report.collect_local([runs]), tmp_path / "exp", bench_csvs=[], baselines=[bases],
                              teacher=teacher_dir(tmp_path))
    curves = out.curves
    for plot in (curves.teacher_plot, curves.routing_plot):
        assert plot is not None and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves.routing_plot.name == "ablation_router_local_global_routing.png"
    assert report.read_curves(tmp_path / "teacher")["val/sad"] == [(0.0, 9.0), (30.0, 5.0), (60.0, 3.5)]
    text = out.results_md.read_text()
    assert "](report/teacher_val_sad.png)" in text and "](report/ablation_router_local_global_routing.png)" in text
    # teacher test SAD 3.0 vs closed-form test SAD 4.0: 25 % lower
    assert "Teacher final test SAD 3.000 vs. closed-form (training-free) 4.000 on synthetic/test" in text
    assert "the teacher is 25.0% lower" in text and "closed-form (training-free) 4.500" in text
    assert "| *ViTMatte teacher* | 1 | 3.000 |" in text and "| *closed-form (training-free)* | — | 4.000 |" in text


def test_missing_optional_inputs_do_not_crash(tmp_path, capsys):
    runs = tmp_path / "runs"
    seed_job(runs, "ablation_router", 0, "router=local_global", 1, 2.0)  # no test_rules, stats, csv
    out = report.write_report(report.collect_local([runs]), tmp_path / "exp", bench_csvs=[])
    text = out.results_md.read_text()
    assert "No teacher run given" in text and "have no csv/metrics.csv: no routing curves" in text
    assert out.curves.teacher_plot is None and out.curves.routing_plot is None
    assert out.tables["ablation_router"].blocks is None and not out.tables["ablation_router"].references
    assert "every setting has a single seed" in text
    assert any(c.verdict == "n/a" for c in out.claims.comparisons)
    # explicit inputs that do not exist: one message, exit 2
    args = ["--runs", str(runs), "--out", str(tmp_path / "exp"), "--no-plots"]
    assert report.main([*args, "--teacher", str(tmp_path / "nope")]) == 2
    assert "teacher folder" in capsys.readouterr().err
    assert report.main([*args, "--baselines", str(tmp_path / "nope")]) == 2
    assert "baselines folder" in capsys.readouterr().err
    empty = tmp_path / "empty_baselines"
    empty.mkdir()
    assert report.main([*args, "--baselines", str(empty)]) == 0


def test_cli_finds_default_baselines_and_teacher(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    multiruns = tmp_path / "logs" / "train" / "multiruns"
    for seed in (1, 2):
        seed_job(multiruns, "ablation_router", seed, "router=local_global", seed, 2.0 + seed)
    baseline_file(tmp_path / "logs" / "ablate" / "baselines", "closed_form", "test", 4.0)
    teacher_dir(tmp_path / "logs" / "ablate")
    assert report.main(["--out", "experiments", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "ablation_router: 2/2 runs finished, 1 settings" in out and "claims:" in out
    rows = report.read_table_csv(tmp_path / "experiments" / "report" / "ablation_router.csv")
    assert [(r["kind"], r["overrides"]) for r in rows] == [
        ("setting", "experiment=tiny_sweep router=local_global init_from=t.ckpt"), ("reference", "closed-form (training-free)"), ("reference", "ViTMatte teacher")]
    assert float(rows[0]["sad_mean"]) == 3.5 and rows[0]["n"] == "2"
    assert report.main(["--out", "experiments", "--no-plots", "--no-baselines", "--no-teacher"]) == 0
    rows = report.read_table_csv(tmp_path / "experiments" / "report" / "ablation_router.csv")
    assert [r["kind"] for r in rows] == ["setting"]


def test_wandb_runs_aggregate_over_seeds():
    def seeded(name, router, seed, sad):
        run = api_run(name, "ablation_router", router, sad)
        # as mematte.cli logs it: the resolved config under "config", overrides beside it
        run.config = {"config": {"seed": seed, "task_name": "train"},
                      "overrides": ["+sweep=ablation_router", f"router={router}", f"seed={seed}"],
                      "sweep_name": "ablation_router"}
        run.summary = {**run.summary, "test/keep_ratio_argmax": 0.1 * seed, "test/keep_ratio_argmax/block2": 0.2}
        return run

    api = FakeApi([seeded("r1", "local_global", 1, 1.0), seeded("r2", "local_global", 2, 3.0),
                   seeded("r3", "local", 1, 2.0)])
    runs = report.collect_runs(None, "e/p", ["ablation_router"], api=api)
    assert [r.seed for r in runs] == ["1", "2", "1"]
    table = report.build_table("ablation_router", runs)
    rows = {r["setting:router"]: r for r in table.rows}
    assert rows["local_global"]["n"] == 2 and rows["local_global"]["sad"] == 2.0
    assert rows["local_global"]["sad_std"] == pytest.approx(2 ** 0.5)
    assert rows["local_global"]["keep_ratio_argmax"] == pytest.approx(0.15)
    assert table.blocks is not None and table.blocks.blocks == [2]
