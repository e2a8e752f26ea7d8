"""Paper recipes (conf/experiment/), ablation sweeps (conf/sweep/), the 8-GPU trainer and the
SLURM launcher: they compose to the paper recipes' numbers, and a sweep really runs as a multirun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import CONF_DIR, ROOT, TINY_TRAIN
from mematte.optim import warmup_multistep_factor

SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml") if not p.stem.startswith("_"))
# the swept option of each ablation and its values (the paper's ablation axes)
SWEPT = {
    "ablation_router": ("router", ["local_global", "local", "small", "tiny", "se", "random", "none"]),
    "ablation_ltrm": ("ltrm", ["conv", "conv_no_eca", "eca_no_dwconv", "conv_no_shortcut", "mlp", "zero"]),
    "ablation_keep_ratio": ("routing.target", ["0.1", "0.25", "0.5", "0.75"]),
    "ablation_objective": ("routing", ["batr", "per_image", "per_layer", "fixed"]),
    "ablation_distill": ("module.distill_weight", ["1.0", "0.0"]),
    "ablation_no_ltrm": ("ltrm", ["conv", "zero"]),
    "ablation_topk_keep": ("routing.target", ["0.1", "0.25", "0.5", "1.0"]),
}
SEEDS = ["1", "2"]  # every setting of every sweep (conf/sweep/_base.yaml)


def sweep_key() -> str:
    """``sweep=`` once conf/train.yaml lists the group in its defaults, ``+sweep=`` before."""
    defaults = yaml.safe_load((CONF_DIR / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and "sweep" in d for d in defaults)
    return "sweep" if listed else "+sweep"


def sweep_jobs(params: dict) -> list[dict[str, str]]:
    """Expand ``hydra.sweeper.params`` as Hydra's basic sweeper does (cartesian product)."""
    parser = OverridesParser.create()
    jobs: list[dict[str, str]] = [{}]
    for key, value in params.items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(value)]
        jobs = [{**job, key: v} for job in jobs for v in values]
    return jobs


# ------------------------------------------------------------------------------ sweeps compose
def test_every_ablation_has_a_sweep():
    assert SWEEPS == sorted(SWEPT), "conf/sweep/ and this test's table of ablations differ"


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_sets_its_params_name_and_dir(make_cfg, name):
    cfg = make_cfg("train", [f"{sweep_key()}={name}"])
    key, values = SWEPT[name]
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert sorted(params) == sorted([key, "seed"])
    jobs = sweep_jobs(params)
    assert sorted((job[key], job["seed"]) for job in jobs) == sorted((v, s) for v in values for s in SEEDS)
    # the base of every ablation is MEMatte (the sweep switches the tiny ViTMatte default)
    assert cfg.router is not None or name == "ablation_router"
    assert cfg.sweep_name == name and name in cfg.tags
    # W&B groups a sweep's runs (the node stays inert when the wandb logger is not selected)
    assert cfg.logger.wandb.group == name
    # the report reads <log_dir>/<task>/multiruns/<sweep>_<date>_<time>/<job>/ (where
    # `resume: auto` also looks: multiruns/*/*)
    sweep_dir = Path(cfg.hydra.sweep.dir)
    assert sweep_dir.parent == Path(cfg.paths.log_dir) / "train" / "multiruns"
    assert re.fullmatch(rf"{name}_\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d", sweep_dir.name)
    assert cfg.hydra.sweep.subdir == "0"  # ${hydra.job.num}


def test_sweeps_total_29_settings_with_two_seeds_each(make_cfg):
    counts = {}
    for name in SWEEPS:
        cfg = make_cfg("train", [f"{sweep_key()}={name}"])
        counts[name] = len(sweep_jobs(OmegaConf.to_container(cfg.hydra.sweeper.params)))
    assert counts == {
        "ablation_router": 14, "ablation_ltrm": 12, "ablation_keep_ratio": 8, "ablation_objective": 8,
        "ablation_distill": 4, "ablation_no_ltrm": 4, "ablation_topk_keep": 8,
    }


def test_topk_keep_sweep_fixes_the_share_of_every_block(make_cfg):
    cfg = make_cfg("train", [f"{sweep_key()}=ablation_topk_keep", "routing.target=1.0"])
    assert cfg.routing.mode == "fixed" and cfg.backbone.global_block.selection == "topk"
    assert cfg.backbone.global_block.keep_ratio == 1.0 and cfg.sweep_value == "keep1.0"


@pytest.mark.parametrize("name", SWEEPS)
def test_swept_options_exist(name):
    """Group values name files of that group (a typo would only fail mid-sweep)."""
    key, values = SWEPT[name]
    group = CONF_DIR / key
    if group.is_dir():
        assert all((group / f"{v}.yaml").is_file() for v in values), sorted(p.stem for p in group.glob("*.yaml"))
    else:
        assert all(float(v) >= 0 for v in values)


@pytest.mark.parametrize("name", SWEEPS)
def test_each_job_composes_and_labels_itself(make_cfg, name):
    key, values = SWEPT[name]
    for value in values:
        cfg = make_cfg("train", [f"{sweep_key()}={name}", f"{key}={value}"])
        assert str(cfg.sweep_value).endswith(value)
        assert cfg.logger.wandb.name == f"{name}-{cfg.sweep_value}-seed{cfg.seed}"
    # the last job's net builds (e.g. router=none → ViTMatte, ltrm=zero → no refiner)
    from hydra.utils import instantiate

    net = instantiate(cfg.model)
    assert net.is_routed == (cfg.router is not None)


def test_paper_scale_protocol_is_one_override_away(make_cfg):
    """The CPU protocol's sweeps at paper scale: same seeds, same rules, 8-GPU DDP on SLURM."""
    cfg = make_cfg("train", ["experiment=mematte_s_c1k", f"{sweep_key()}=ablation_router", "trainer=ddp_8gpu",
                             "hydra/launcher=slurm"], tiny=False)
    assert OmegaConf.to_container(cfg.hydra.sweeper.params)["seed"] == "1,2"
    assert list(cfg.test_inference_rules) == ["argmax", "expected"]
    assert cfg.trainer.devices == 8 and cfg.backbone.embed_dim == 384
    assert cfg.teacher.ckpt == cfg.init_from
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    assert OmegaConf.to_container(cfg.hydra.launcher, resolve=True)["_target_"].endswith("SlurmLauncher")


@pytest.mark.parametrize("experiment", ["tiny_cpu", "mematte_s_c1k"])
def test_sweeps_combine_with_experiments(make_cfg, experiment):
    tiny = experiment == "tiny_cpu"
    cfg = make_cfg("train", [f"experiment={experiment}", f"{sweep_key()}=ablation_keep_ratio"], tiny=tiny)
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {"routing.target": "0.1,0.25,0.5,0.75",
                                                                 "seed": "1,2"}
    assert cfg.router._target_.endswith("LocalGlobalRouter")
    if tiny:
        assert cfg.backbone.embed_dim == 192 and cfg.trainer.accelerator == "cpu"
    else:  # the recipe's values survive the sweep (which only adds the MEMatte preset)
        assert cfg.backbone.embed_dim == 384 and cfg.trainer.max_steps == 40406
        assert cfg.teacher.ckpt == cfg.init_from


# ------------------------------------------------------------------------------ paper recipes
# docs/training.md, paper recipes (and the public configs named in each recipe): what each recipe must say.
RECIPES = {
    #                  embed router  data             global batch  max_steps  milestone steps  init file
    "vitmatte_s_c1k": (384, False, "composition1k", 32, 134687, (40406, 121218), "dino_deitsmall16_pretrain.pth"),
    "vitmatte_b_c1k": (768, False, "composition1k", 20, 215500, (64650, 193950), "mae_pretrain_vit_base.pth"),
    "mematte_s_c1k": (384, True, "composition1k", 32, 40406, (8081, 35018), "ViTMatte_S_Com.pth"),
    "mematte_b_c1k": (768, True, "composition1k", 40, 64650, (32325, 56030), "ViTMatte_B_Com.pth"),
    "mematte_s_uhr395": (384, True, "uhr395", 32, 40406, (8081, 35018), "ViTMatte_S_Com.pth"),
    "mematte_s_aim500": (384, True, "composition1k", 32, 40406, (8081, 35018), "ViTMatte_S_Com.pth"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_paper_recipe(make_cfg, name):
    embed, routed, data, global_batch, steps, milestones, init = RECIPES[name]
    cfg = make_cfg("train", [f"experiment={name}"], tiny=False)
    assert cfg.backbone.embed_dim == embed
    assert list(cfg.decoder.fusion_out) == [256, 128, 64, 32]  # the paper's decoder widths
    assert cfg.hydra.runtime.choices.data == data
    assert (cfg.router is not None) == routed
    # data.batch_size is per GPU (Lightning's batch is per process)
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == global_batch
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm
    assert cfg.trainer.precision == "16-mixed"  # docs/training.md, paper recipes: fp16 autocast
    assert cfg.trainer.max_steps == steps
    m = cfg.module
    assert (m.lr, m.weight_decay, m.layer_decay) == (5e-4, 0.1, 0.65)
    assert m.scheduler.warmup_steps == 250 and m.scheduler.warmup_factor == 0.001
    assert list(m.scheduler["values"]) == [1.0, 0.1, 0.05]
    # the fractional milestones land on the public configs' iterations
    factor = lambda step: warmup_multistep_factor(step, steps, 250, 0.001, m.scheduler.milestones, m.scheduler["values"])  # noqa: E731
    first, second = milestones
    assert [factor(first - 1), factor(first), factor(second - 1), factor(second)] == [1.0, 0.1, 0.1, 0.05]
    assert Path(cfg.init_from) == ROOT / "pretrained" / init
    if routed:  # docs/method.md, MEMatte: distilled from the ViTMatte it starts from, weight 1, BATR 0.25
        assert cfg.teacher.ckpt == cfg.init_from and m.distill_weight == 1.0
        assert cfg.routing.mode == "batch" and cfg.routing.target == 0.25
        assert cfg.router._target_.endswith("LocalGlobalRouter")
        assert cfg.ltrm._target_.endswith("ConvTokenRefiner")
    else:
        assert cfg.teacher.ckpt is None


@pytest.mark.parametrize("name", ["mematte_s_c1k", "vitmatte_s_c1k"])
def test_recipe_without_weights_names_the_missing_file(make_cfg, name):
    from mematte.cli import build_module

    # the tiny backbone keeps this cheap; the init path is the recipe's
    cfg = make_cfg("train", [f"experiment={name}", "backbone=vit_tiny"], tiny=False)
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: .*pretrained/{RECIPES[name][-1]}"):
        build_module(cfg)


def test_aim500_recipe_trains_on_c1k_and_tests_on_aim500(make_cfg, tmp_path):
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    from test_folders import LOADERS, TINY, make_aim500, make_composition1k

    c1k, aim = tmp_path / "c1k", tmp_path / "aim"
    make_composition1k(c1k)
    make_aim500(aim)
    base = ["experiment=mematte_s_aim500", f"data.root={c1k}", *LOADERS, *TINY]
    dm = instantiate(make_cfg("train", [*base, f"aim500_root={aim}"], tiny=False).data, _convert_="partial")
    # validation (model selection) on C1K's test images, the final test on AIM-500's
    assert dm.val_set.root.path == c1k and len(dm.val_set) == 3
    assert dm.test_set.root.path == aim and len(dm.test_set) == 2
    assert dm.test_set.layout == {"image": "original", "alpha": "mask", "trimap": "trimap"}
    # without aim500_root (or data.test_set.root) the run stops before training
    with pytest.raises(MissingMandatoryValue, match="data.test_set.root"):
        instantiate(make_cfg("train", base, tiny=False).data, _convert_="partial")


# ------------------------------------------------------------------------------ trainer, launcher
def test_ddp_8gpu_trainer(make_cfg):
    cfg = make_cfg("train", ["trainer=ddp_8gpu"], tiny=False)
    t = cfg.trainer
    assert (t.strategy, t.devices, t.num_nodes, t.precision, t.sync_batchnorm) == ("ddp", 8, 1, "16-mixed", True)
    assert t.accelerator == "gpu" and t.use_distributed_sampler


def test_slurm_launcher_composes(make_cfg):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = make_cfg("train", ["hydra/launcher=slurm", "experiment=mematte_s_c1k",
                             "hydra.launcher.partition=gpu"], tiny=False)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    # one task per GPU, as many as the trainer's DDP processes
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == cfg.trainer.devices == 8
    assert launcher["nodes"] == 1 and launcher["partition"] == "gpu"
    assert launcher["timeout_min"] > 0 and launcher["cpus_per_task"] >= 1 and launcher["mem_gb"] > 0
    # SLURM warns with the signal the Preemption callback requeues on
    preemption = cfg.callbacks.preemption
    assert launcher["additional_parameters"]["signal"] == f"USR1@{launcher['signal_delay_s']}"
    assert "SIGUSR1" in preemption.requeue_signals and launcher["additional_parameters"]["requeue"] is True
    assert launcher["submitit_folder"].startswith(str(Path(cfg.hydra.sweep.dir)))


def test_slurm_launcher_writes_the_sbatch_script(make_cfg, tmp_path, monkeypatch):
    """The plugin's own launch() up to submission: the sbatch script it would send to SLURM."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    fake_bin = tmp_path / "bin"  # submitit looks for srun before it builds a SLURM executor
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    cfg = make_cfg("train", ["hydra/launcher=slurm", "experiment=mematte_s_c1k", "hydra.launcher.partition=gpu"],
                   tiny=False)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = SlurmLauncher(**{k: v for k, v in params.items() if k != "_target_"})
    launcher.config = cfg

    class Submitted(Exception):
        pass

    def capture(executor, *args, **kwargs):
        raise Submitted(executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid"))

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    with pytest.raises(Submitted) as submitted:
        launcher.launch([["routing.target=0.5"]], initial_job_idx=0)
    script = str(submitted.value)
    for line in ("--gpus-per-node=8", "--ntasks-per-node=8", "--nodes=1", "--cpus-per-task=10", "--mem=320GB",
                 "--time=1440", "--partition=gpu", "--signal=USR1@120", "--requeue"):
        assert f"#SBATCH {line}" in script, script


def test_make_ablate_trains_the_teacher_then_runs_every_sweep_from_it():
    """`make ablate` (dry run): the ViTMatte teacher first, then experiments/ablate.sh, which
    runs each sweep from the teacher's best checkpoint, and the baselines, in parallel lanes."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "-W", "conf/experiment/ablate_cpu.yaml",
                           "ablate", "ABLATE_DIR=/nonexistent/ablate"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    teacher = text.index("train.py experiment=ablate_cpu_teacher hydra.run.dir=/nonexistent/ablate/teacher")
    assert text.index("experiments/ablate.sh") > teacher
    assert "ABLATE_LANES=2" in text
    sweeps = text.split('ABLATE_SWEEPS="', 1)[1].split('"', 1)[0].split()
    # no_ltrm ⊂ ltrm; the BATR-target sweep is optional (the budget)
    assert sorted(sweeps) == sorted(s for s in SWEEPS if s not in ("ablation_no_ltrm", "ablation_keep_ratio"))
    script = (ROOT / "experiments" / "ablate.sh").read_text()
    assert 'sweep="$item" init_from="$teacher" teacher.ckpt="$teacher"' in script
    assert 'eval.py baseline="${run%_*}" split="${run##*_}"' in script


def test_ablate_script_refuses_to_run_without_a_teacher(tmp_path):
    env = {**os.environ, "ABLATE_DIR": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "ablate.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "no teacher checkpoint" in proc.stderr and "make ablate" in proc.stderr


def test_sweep_job_identical_to_a_finished_one_reuses_its_results(make_cfg):
    """MEMatte's default setting is a row of several ablations: with ``reuse_finished`` the
    second identical job (other labels and paths, same seed) takes the first one's results."""
    from omegaconf import open_dict

    from mematte import resilience
    from mematte.cli import train

    def job(sweep: str, overrides: list[str] = ()):
        cfg = make_cfg("train", ["router=local_global", "reuse_finished=true", f"tags=[{sweep}]", *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "train" / "multiruns" / sweep / "0")
        Path(cfg.paths.output_dir).mkdir(parents=True)
        return cfg

    first = job("ablation_router")
    train(first)
    trained = json.loads((Path(first.paths.output_dir) / "metrics.json").read_text())
    assert trained["config_fingerprint"] and "reused_from" not in trained

    second = job("ablation_ltrm")
    train(second)
    out = Path(second.paths.output_dir)
    reused = json.loads((out / "metrics.json").read_text())
    assert reused["reused_from"] == str(Path(first.paths.output_dir).resolve())
    assert reused["test"] == trained["test"] and reused["config"]["tags"] == ["ablation_ltrm"]
    assert (out / "csv" / "metrics.csv").is_file() and not (out / "checkpoints").exists()
    assert resilience.is_finished(out)

    # another seed, or the option off, is another experiment
    assert resilience.config_fingerprint({**trained["config"], "seed": 7}) != trained["config_fingerprint"]
    assert resilience.config_fingerprint({**trained["config"], "tags": ["x"], "paths": {}}) == \
        trained["config_fingerprint"]


# ------------------------------------------------------------------------------ real runs
def run_train(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_multirun_sweep_runs_every_job(tmp_path):
    """`python train.py -m sweep=ablation_no_ltrm` with one seed: 2 jobs, each with its own
    metrics.json, the test split scored under both inference rules."""
    sweep_dir = tmp_path / "sweep"
    run_train(["-m", "experiment=tiny_cpu", f"{sweep_key()}=ablation_no_ltrm", *TINY_TRAIN,
               "hydra.sweeper.params.seed=7", "test_inference_rules=[argmax,expected]",
               f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    for job, ltrm in zip(jobs, ["conv", "zero"]):
        summary = json.loads((job / "metrics.json").read_text())
        assert summary["global_step"] == 2 and set(summary["test"]) >= {"sad", "mse", "grad", "conn"}
        assert f"ltrm={ltrm}" in OmegaConf.load(job / ".hydra" / "overrides.yaml")
        assert summary["config"]["sweep_name"] == "ablation_no_ltrm"
        assert summary["config"]["sweep_value"] == ltrm and summary["config"]["seed"] == 7
        # argmax is the configured rule: its entry is the run's own test metrics
        assert set(summary["test_rules"]) == {"argmax", "expected"}
        assert summary["test_rules"]["argmax"] == summary["test"]
        assert set(summary["test_rules"]["expected"]) >= {"sad", "mse", "grad", "conn"}
    assert (sweep_dir / "multirun.yaml").is_file()


@pytest.mark.slow
def test_distill_sweep_distils_from_a_trained_vitmatte(tmp_path):
    """The `make sweep` chain in small: a ViTMatte run, then the distillation sweep from it."""
    teacher_dir = tmp_path / "teacher"
    run_train(["experiment=tiny_cpu", *TINY_TRAIN, "test=false", f"hydra.run.dir={teacher_dir}"], cwd=tmp_path)
    teacher = teacher_dir / "checkpoints" / "last.ckpt"
    assert teacher.is_file()
    sweep_dir = tmp_path / "sweep"
    run_train(["-m", "experiment=tiny_cpu", f"{sweep_key()}=ablation_distill", *TINY_TRAIN,
               f"init_from={teacher}", f"teacher.ckpt={teacher}", "test=false", "validate_before_training=false",
               f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    for job, weight in (("0", 1.0), ("1", 0.0)):
        summary = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert summary["config"]["module"]["distill_weight"] == weight
        header = (sweep_dir / job / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        # the distillation term is computed (and logged) only with a positive weight
        assert ("train/distill" in header) == (weight > 0), header


@pytest.mark.slow
def test_ddp_8gpu_on_two_cpu_processes(tmp_path):
    """trainer=ddp_8gpu (DDP, per-process batch) with 2 gloo processes, on a routed MEMatte."""
    run_dir = tmp_path / "ddp"
    overrides = [o for o in TINY_TRAIN if o != "trainer=cpu"]
    run_train([*overrides, "model=mematte", "trainer=ddp_8gpu", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.sync_batchnorm=false", "trainer.precision=32-true", f"hydra.run.dir={run_dir}"],
              cwd=tmp_path)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 2
    assert summary["config"]["trainer"]["strategy"] == "ddp"
    assert set(summary["test"]) >= {"sad", "mse", "grad", "conn"}
