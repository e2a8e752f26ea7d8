"""Train a matting net: ``python train.py [group=option ...]`` (see conf/train.yaml).

A wrong option or input file ends the run with one message naming it and the fix (exit 1).
"""
import hydra
from omegaconf import DictConfig

from mematte.cli import run_task, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
