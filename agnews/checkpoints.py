"""Checkpoints: finding a run's (`best`, `last`, or a file), reading them safely, writing them safely."""

import os
import re
import signal
import sys
import threading
import zipfile
from pathlib import Path

import lightning as L
import torch

from agnews.errors import AGNewsError, TrainingInterrupted
from agnews.internals import CheckpointHooks

LOG_ROOT = Path("lightning_logs")


def runs(log_root: Path) -> list[Path]:
    """Run folders (`version_N`), newest first."""
    found = [p for p in Path(log_root).glob("version_*") if p.is_dir() and re.fullmatch(r"version_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]), reverse=True)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, tensors memory-mapped; a damaged or truncated file is a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AGNewsError(
            f"checkpoint {path} is damaged or truncated ({reason}); pass another one, e.g. --ckpt_path last or an earlier run's file"
        ) from None


def _best_in(folder: Path) -> Path | None:
    candidates = [p for p in folder.glob("*.ckpt") if not p.name.startswith("last")]
    last = folder / "last.ckpt"
    if len(candidates) > 1 and last.is_file():
        # several kept (save_top_k > 1): ModelCheckpoint's own state says which is best
        for key, value in read_checkpoint(last).get("callbacks", {}).items():
            if key.startswith(("ModelCheckpoint", "SafeCheckpoint")) and value.get("best_model_path"):
                best = folder / Path(value["best_model_path"]).name
                if best.is_file():
                    return best
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def find_checkpoint(log_root: Path, which: str) -> Path:
    """`which` is a file, or `best`/`last` of the most recent run under `log_root` that saved checkpoints."""
    if which not in ("best", "last"):
        path = Path(which).expanduser()
        if not path.is_file():
            raise AGNewsError(
                f"checkpoint {which!r} does not exist; pass an existing .ckpt file, or 'best'/'last' of the latest run"
            )
        return path
    for run in runs(log_root):
        folder = run / "checkpoints"
        path = (folder / "last.ckpt") if which == "last" else _best_in(folder)
        if path is not None and path.is_file():
            return path
    raise AGNewsError(
        f"no {which} checkpoint under {log_root}/; run `python -m agnews.train fit` first or pass --ckpt_path FILE"
    )


class SafeCheckpoint(CheckpointHooks):
    """ModelCheckpoint that survives what ends CPU runs early.

    - SIGINT (Ctrl-C) or SIGTERM during `fit`: the current batch finishes, `last.ckpt` is written at that
      step, and the run stops; `fit --ckpt_path last` continues from there. A second Ctrl-C quits at once.
    - `last.ckpt` is written after every epoch, as `save_last` promises: Lightning 2.6 only refreshes it when
      a top-k checkpoint was saved at the same step, which leaves it stale after an epoch without progress.
    - A checkpoint that cannot be written (read-only folder, full disk) stops the run with one clear line;
      Lightning writes to a temporary file and renames it, and the previous best is only deleted after the
      new one is written, so earlier checkpoints stay valid.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._signal: int | None = None
        self._previous_handlers: dict[int, object] = {}

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # asked twice: stop now, without a checkpoint
            self._restore_handlers()
            raise KeyboardInterrupt
        self._signal = signum
        print(
            f"\nagnews: {signal.Signals(signum).name} received: saving last.ckpt after this batch, then stopping "
            f"(Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._signal = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        super().on_exception(trainer, pl_module, exception)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.saves_on_train_epoch_end(trainer):
            self.refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self.saves_on_train_epoch_end(trainer):
            self.refresh_last(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # every process stops at the same step, whichever of them got the signal
        if not trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False):
            return
        batch_idx = args[-1] if args else kwargs.get("batch_idx", 0)
        if (batch_idx + 1) % trainer.accumulate_grad_batches and batch_idx + 1 < trainer.num_training_batches:
            return  # mid-accumulation: the gradients summed so far are not in a checkpoint, finish the step first
        signum = self._signal or signal.SIGTERM
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self.write(trainer, path)
        raise TrainingInterrupted(
            signum,
            f"{signal.Signals(signum).name}: stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"saved {path}. Continue with: python -m agnews.train fit --ckpt_path last (and the same options)",
        )

    def on_write_error(self, filepath: str, error: OSError) -> None:
        raise AGNewsError(
            f"cannot write checkpoint {filepath} ({error.strerror or error}); earlier checkpoints are kept. "
            f"Make {os.path.dirname(filepath)} writable or free space, then resume with fit --ckpt_path last"
        ) from None
