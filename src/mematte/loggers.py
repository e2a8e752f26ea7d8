"""Experiment loggers picked by ``conf/logger/`` (Lightning's, with the fixes they need here)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger"]


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` without the ``anonymous`` argument it always hands to
    ``wandb.init``.

    Lightning passes ``anonymous=None`` when the option is unused; wandb ≥ 0.19 deprecated the
    setting and warns "The anonymous setting has no effect" for any value it is given, on
    every run. Leaving the key out is what wandb asks for. Takes Lightning's arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("anonymous"):
            raise ValueError("logger.wandb.anonymous: wandb no longer supports anonymous runs; remove the key")
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
