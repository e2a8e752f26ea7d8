"""Evaluate a checkpoint: ``python eval.py ckpt_path=PATH [data=...] [split=test]``, or a
training-free baseline the same way: ``python eval.py baseline=closed_form`` (knn, lkm, fill_half).

Exits with code 1 when an option or file is wrong (one message, no traceback), or when
dataset files could not be read: those are left out, listed at the end and under "skipped"
in the metrics JSON, and the rest is still scored.
"""
import sys

import hydra
from omegaconf import DictConfig

from mematte.cli import eval_main


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    code = eval_main(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
