"""Memory/latency benchmark of full-resolution inference: ``python bench.py [device=cuda] ...``."""
import hydra
from omegaconf import DictConfig

from mematte.cli import apply_extras, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    from mematte.bench import run_benchmark

    apply_extras(cfg)
    run_task(run_benchmark, cfg)


if __name__ == "__main__":
    main()
