"""Matte images: ``python predict.py ckpt_path=CKPT input=IMG_OR_DIR trimaps=DIR out=DIR``.

Exits with code 1 when any image failed (listed in ``out/failures.json``) or the options
are wrong.
"""
import gc
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    # imported here, not above: `--help` then needs neither torch nor the models
    from mematte.predict import run_from_config

    # the objects of every module imported so far live as long as the process: out of the
    # collector's sight, the interpreter's exit takes about 0.2 s instead of 0.6 s (torch)
    gc.freeze()
    code = run_from_config(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
