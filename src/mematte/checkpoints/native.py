"""mematte's own checkpoints: Lightning checkpoints whose ``"mematte"`` entry stores the resolved
net config, so a checkpoint alone rebuilds its model (:func:`net_from_checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mematte.checkpoint_compat import upgrade_checkpoint
from mematte.checkpoints.common import NetWeights
from mematte.checkpoints.netconfig import build_net


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint written by ``mematte.cli.train``, with a clear error if unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (pass ckpt_path=<run>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt / truncated file
        raise RuntimeError(f"cannot read checkpoint {path}: {err}. Is the file complete?") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "mematte" not in ckpt:
        raise ValueError(
            f"{path} is not a mematte training checkpoint (no 'state_dict'/'mematte' entries)"
        )
    return upgrade_checkpoint(ckpt, path)  # written by another mematte version: fit or explain


def net_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The net's weights from a training checkpoint (``net.`` prefix removed, teacher dropped)."""
    return {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def net_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the net from the config stored in a checkpoint and load its weights."""
    net_config = ckpt["mematte"].get("net_config")
    if not net_config:
        raise ValueError("checkpoint stores no net config; it was not written by mematte.train")
    net = build_net(net_config, init_weights=False)  # strict: every weight is loaded next
    net.load_state_dict(net_state(ckpt), strict=True)
    return net


def save_net_checkpoint(
    net: nn.Module,
    net_config: DictConfig | Mapping[str, Any],
    path: str | Path,
    *,
    source: str | Path | None = None,
    source_format: str | None = None,
) -> Path:
    """Write a mematte checkpoint (what ``eval.py ckpt_path=`` / ``predict.py`` read).

    Only weights and the resolved net config: no optimiser state, so it is a start point
    (``init_from=``, ``teacher.ckpt=``) or an evaluation target, not a run to resume.

    Args:
        net: the net whose ``state_dict`` is stored (under ``net.``, as the Lightning module does).
        net_config: its model config (``_target_`` tree); stored resolved.
        path: output file.
        source, source_format: where the weights came from (recorded for provenance).

    Returns:
        the written path.
    """
    import mematte

    if isinstance(net_config, DictConfig):
        net_config = OmegaConf.to_container(net_config, resolve=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "state_dict": {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()},
        "mematte": {
            "net_config": dict(net_config),
            "converted_from": str(source) if source is not None else None,
            "source_format": source_format,
            "versions": {"mematte": mematte.__version__, "torch": str(torch.__version__)},
        },
        "global_step": 0,
        "epoch": 0,
    }
    torch.save(ckpt, path)
    return path


def read_mematte_weights(path: str | Path, *, _loaded: Any = None) -> NetWeights:
    """A mematte training checkpoint: weights and the stored net config."""
    path = Path(path)
    ckpt = load_checkpoint(path) if _loaded is None else upgrade_checkpoint(_loaded, path)
    return NetWeights(
        state=net_state(ckpt),
        format="mematte",
        source=path,
        net_config=ckpt["mematte"].get("net_config"),
        step=ckpt.get("global_step"),
    )
