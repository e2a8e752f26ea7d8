"""Convert weights between formats: ``python -m mematte.convert --from PATH --to OUT``.

Reads any format :mod:`mematte.checkpoints` knows (mematte checkpoint, official ViTMatte/MEMatte
``.pth``, Hugging Face VitMatte folder, timm/DINO/MAE ViT) and writes either

- a mematte checkpoint (default): ``eval.py ckpt_path=OUT``, ``predict.py ckpt_path=OUT``,
  ``train.py init_from=OUT`` and ``teacher.ckpt=OUT`` read it; or
- an official ``{'model': state_dict}`` file (``--to-format official``); or
- a Hugging Face ``save_pretrained`` folder (``--to-format hf``: ``config.json``,
  ``model.safetensors``, ``preprocessor_config.json``) that
  ``transformers.VitMatteForImageMatting.from_pretrained`` loads — ViTMatte nets only.

Examples::

    python -m mematte.convert --from ViTMatte_S_Com.pth --to vitmatte_s.ckpt
    python -m mematte.convert --from hustvl-vitmatte-small/ --to vitmatte_s_hf.ckpt
    python -m mematte.convert --from logs/.../last.ckpt --to mematte_s.pth --to-format official
    python -m mematte.convert --from logs/.../last.ckpt --to vitmatte_hf/ --to-format hf
    python -m mematte.convert --from hustvl/vitmatte-small-composition-1k --to vitmatte_s.ckpt
    python -m mematte.convert --from released.pth --trust-checkpoint --to weights.ckpt
    python -m mematte.convert --from dino_deitsmall16_pretrain.pth --format dino \\
        --model-config my_model.yaml --to dino_init.ckpt
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mematte.checkpoints import (
    FORMAT_ALIASES,
    apply_weights,
    build_net,
    export_hf,
    export_official,
    read_weights,
    resolve_net_config,
    save_net_checkpoint,
)

log = logging.getLogger("mematte")

TO_FORMATS = ("mematte", "official", "hf")


def load_model_config(path: str | Path) -> dict[str, Any]:
    """A model config from YAML: a ``_target_`` tree, or a full run config with a ``model`` node
    (e.g. a run's ``.hydra/config.yaml``; interpolations resolved against the whole file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path}: expected a mapping with a _target_ (or a 'model' entry)")
    node = cfg if "_target_" in cfg else cfg.get("model")
    if node is None or "_target_" not in node:
        raise ValueError(f"{path}: no model config (no top-level _target_, no 'model' entry with one)")
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def convert(
    source: str | Path,
    out: str | Path,
    *,
    format: str = "auto",
    model_config: str | Path | None = None,
    to_format: str = "mematte",
    flavour: str | None = None,
    trust: bool = False,
) -> Path:
    """Read ``source`` in any supported format, write ``out`` as a mematte, official or Hugging
    Face file.

    Args:
        source: weights file, Hugging Face folder or hub id.
        out: output path.
        format: input format (``auto`` detects it).
        model_config: YAML model config to build; default: stored in / inferred from the source.
        to_format: ``mematte`` (checkpoint for eval/predict/init_from), ``official`` or ``hf``
            (a folder; ViTMatte only).
        flavour: official flavour, ``mematte`` or ``vitmatte`` (default: from the net).
        trust: unpickle the source fully (runs code stored in it; see
            :func:`mematte.checkpoints.read_weights`).

    Returns:
        the written path.
    """
    if to_format not in TO_FORMATS:
        raise ValueError(f"--to-format {to_format!r}: choose one of {', '.join(TO_FORMATS)}")
    weights = read_weights(source, format, trust=trust)
    config = resolve_net_config(weights, load_model_config(model_config) if model_config else None)
    net = build_net(config)
    apply_weights(net, weights, partial=not weights.full)
    if not weights.full:
        log.warning("%s holds a backbone only: the decoder in %s is untrained (use it as init_from=)",
                    source, out)
    if to_format == "official":
        return export_official(net, out, flavour)
    if to_format == "hf":
        if not weights.full:
            raise ValueError(f"{source} holds a backbone only: a Hugging Face VitMatte needs a trained decoder")
        return export_hf(net, out, config)
    return save_net_checkpoint(net, config, out, source=source, source_format=weights.format)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m mematte.convert`` options."""
    parser = argparse.ArgumentParser(
        prog="python -m mematte.convert",
        description="Convert ViTMatte / MEMatte weights between mematte, official, "
        "Hugging Face and ViT-backbone formats.",
    )
    add = parser.add_argument
    add("--from", dest="source", required=True, help="weights file or Hugging Face folder")
    add("--to", dest="out", required=True, help="output file (.ckpt for mematte, .pth for official) or folder (hf)")
    add("--format", default="auto", choices=list(FORMAT_ALIASES), help="input format (default: detect)")
    add("--model-config", default=None, help="YAML model config (default: stored in or inferred from the input)")
    add("--to-format", default="mematte", choices=list(TO_FORMATS), help="output format")
    add("--flavour", default=None, choices=["mematte", "vitmatte"], help="official flavour (default: from the net)")
    add("--trust-checkpoint", action="store_true",
        help="unpickle the input fully (weights_only=False): runs code stored in the file; only for "
        "files you trust whose weights live inside pickled objects")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: returns the exit code (0 ok, 1 conversion error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = convert(
            args.source, args.out, format=args.format, model_config=args.model_config,
            to_format=args.to_format, flavour=args.flavour, trust=args.trust_checkpoint,
        )
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
