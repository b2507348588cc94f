"""The callbacks and checkpoint writer every training run gets: its random states and its
id in every checkpoint, `last.ckpt` on SIGTERM, and checkpoints written atomically."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from microrec.files import atomic_write
from microrec.runs.folders import RUN_ID, new_run_id


class RngStates(Callback):
    """Keeps torch's, NumPy's and Python's random states in every checkpoint.

    Lightning does not, so without this a resumed run draws other dropout masks than the
    run it continues. The states are put back in `on_train_start`, the last hook before
    the first training batch; all are plain tensors, ints and strings, so the checkpoint
    still loads with weights_only=True.
    """

    def __init__(self):
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state

    def on_train_start(self, trainer, pl_module) -> None:
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        kind, key, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class RunIdentity(Callback):
    """Names the run in every checkpoint (`runs.folders.checkpoint_run_id` reads it back).

    A fresh run draws a new id; a resumed one gets its own back from the checkpoint, so
    metrics.json and predictions.parquet, written after training, carry the run's one id.
    """

    def __init__(self):
        self.run_id = new_run_id()

    def state_dict(self) -> dict:
        return {RUN_ID: self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state[RUN_ID]


class CheckpointOnSigterm(Callback):
    """Writes `last.ckpt` when Lightning stops training on SIGTERM, so `resume=` continues
    from there even before the first regular checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)  # all that resume needs


class CheckpointFiles(TorchCheckpointIO):
    """Checkpoints written like every other output (`files.atomic_write`): whole or not at
    all, with the umask's mode, and a full disk is one sentence naming the checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first, as Lightning does: torch's own file
        # writer reports a failed write without its errno
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))
