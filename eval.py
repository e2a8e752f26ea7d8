"""Evaluate a checkpoint: ``python eval.py ckpt_path=PATH [data=...] [split=test]``."""
import hydra
from omegaconf import DictConfig

from mematte.cli import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
