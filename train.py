"""Train a matting net: ``python train.py [group=option ...]`` (see conf/train.yaml)."""
import hydra
from omegaconf import DictConfig

from mematte.cli import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
