"""`SafeCheckpoint`: the ModelCheckpoint agnews fits with, which survives signals and failed writes."""

import os
import signal
import sys
import threading

import lightning as L
import torch

from agnews.errors import AGNewsError, TrainingInterrupted
from agnews.internals import CheckpointHooks


class SafeCheckpoint(CheckpointHooks):
    """ModelCheckpoint that survives what ends CPU runs early.

    - SIGINT (Ctrl-C) or SIGTERM during `fit`: the current batch finishes, `last.ckpt` is written at that
      step, and the run stops; `fit --ckpt_path last` continues from there. A second Ctrl-C quits at once.
    - `last.ckpt` is written after every epoch, as `save_last` promises: Lightning 2.6 only refreshes it when
      a top-k checkpoint was saved at the same step, which leaves it stale after an epoch without progress.
    - A checkpoint that cannot be written (read-only folder, full disk) stops the run with one clear line;
      Lightning writes to a temporary file and renames it, and the previous best is only deleted after the
      new one is written, so earlier checkpoints stay valid.

    Not Lightning's SIGTERM handling with `OnExceptionCheckpoint`: that raises at the next batch end, also
    mid-accumulation or mid-validation, and saves there (Ctrl-C raises wherever it lands), so the resumed run
    would not continue with the same weights; this one stops only at an optimizer-step boundary.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._signal: int | None = None
        self._previous_handlers: dict[int, object] = {}

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        # a tie goes to the later model: it trained further down the schedule (an accuracy ties often on 1,000 rows)
        if super().check_monitor_top_k(trainer, current):
            return True
        if current is None or self.save_top_k < 1 or len(self.best_k_models) < self.save_top_k:
            return False
        tie = bool(current == self.best_k_models[self.kth_best_model_path])
        return trainer.strategy.reduce_boolean_decision(tie)

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
        if self._stop_requested(trainer):  # a signal during the epoch's last batch: the epoch was finished first
            self._stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self.saves_on_train_epoch_end(trainer):
            self.refresh_last(trainer)

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        # every process stops at the same step, whichever of them got the signal
        return trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if not self._stop_requested(trainer):
            return
        batch_idx = args[-1] if args else kwargs.get("batch_idx", 0)
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last batch: its validation and epoch-end checkpoint come first (on_train_epoch_end)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the gradients summed so far are not in a checkpoint, finish the step first
        self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
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
