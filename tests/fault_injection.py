"""Faults injected into a training subprocess from its config (``+callbacks.<name>._target_=``);
the subprocess needs this folder on ``PYTHONPATH``."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class KillAfterCheckpoint(ModelCheckpoint):
    """SIGKILL the process right after ``last.ckpt`` closes step ``at_step``: the file is on
    disk, the step's log rows are not yet (Lightning logs them after the checkpoint hooks).

    A ModelCheckpoint that saves nothing itself: Lightning runs checkpoint callbacks last, in
    their given order, so this one's hook comes after the ``last_checkpoint`` callback's.
    """

    def __init__(self, at_step: int) -> None:
        super().__init__(save_top_k=0, save_last=False)
        self.at_step = at_step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)
