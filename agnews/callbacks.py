"""Every Lightning callback agnews adds: checkpoints that survive signals, the epoch-time estimate, the fit
summary, the test report, and the `predict` output."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from agnews.batching import in_original_order
from agnews.errors import AGNewsError, TrainingInterrupted
from agnews.inference import check_output, quantize_int8, write_predictions
from agnews.internals import CheckpointHooks
from agnews.plot import plot_runs
from agnews.precision import is_bf16
from agnews.report import build_report, log_to_tensorboard, render_markdown, run_hparams, run_seed


class EpochEstimate(Callback):
    """Once the first `batches` training batches have run, one line: seconds per batch, and the minutes an epoch
    and the whole fit will take at that pace (validation not included)."""

    def __init__(self, batches: int = 20):
        self.batches = batches
        self._start: float | None = None  # the clock starts at the second batch: set-up and warm-up left out
        self._first = 0  # the batch it started at
        self._done = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._start is None and batch_idx >= 1:
            self._start, self._first = time.perf_counter(), batch_idx

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        per_epoch = trainer.num_training_batches
        if (
            self._done
            or self._start is None
            or batch_idx + 1 - self._first < min(self.batches, per_epoch - self._first)
        ):
            return
        self._done = True
        seconds = (time.perf_counter() - self._start) / (batch_idx + 1 - self._first)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        left = per_epoch * epochs - (trainer.current_epoch * per_epoch + batch_idx + 1)
        rank_zero_info(
            f"agnews: {seconds:.2f} s per training batch -> about {seconds * per_epoch / 60:.1f} min per epoch "
            f"({per_epoch:,} batches), {seconds * left / 60:.1f} min of training left over {epochs} epoch(s)"
        )


class FitSummary(Callback):
    """At the end of `fit`, print the best validation figures, where the best checkpoint is, and time per epoch,
    and draw the run's curves into `curves.png` in its folder. Its history travels in checkpoints, so the summary
    of a resumed run spans the whole training."""

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self.val_history: list[dict[str, float]] = []
        self._epoch_start = 0.0

    def state_dict(self) -> dict:
        return {"epoch_seconds": list(self.epoch_seconds), "val_history": [dict(v) for v in self.val_history]}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # a resumed fit continues its history; a test of the best checkpoint right after fit (`fit --test true`)
        # leaves the fit's own as it is (Lightning restores every callback's state for a test too)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        state = checkpoint.get("callbacks", {}).get(self.state_key, {})
        self.epoch_seconds = list(state.get("epoch_seconds", []))
        self.val_history = [dict(v) for v in state.get("val_history", [])]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        entry = {k: float(v) for k, v in metrics.items() if k.startswith("val_")}
        self.val_history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **entry})

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lines = ["", "== fit summary =="]
        hp = pl_module.hparams
        data = getattr(trainer.datamodule, "hparams", {})
        lines.append(f"encoder {hp.get('backbone')}, data {data.get('dataset')}, precision {trainer.precision}")
        if hp.get("chosen_by"):
            lines.append(f"chosen by agnews: {hp['chosen_by']}")
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        # the epoch the checkpoint kept: by its own monitor and mode (the final epoch when it monitors nothing)
        monitor = checkpoint.monitor if checkpoint is not None and checkpoint.monitor else None
        scored = [v for v in self.val_history if monitor is None or monitor in v]
        best = None
        if scored:
            pick = max if checkpoint is not None and checkpoint.mode == "max" else min
            # a tie: the later validation, as SafeCheckpoint keeps it
            best = pick(reversed(scored), key=lambda v: v[monitor]) if monitor else scored[-1]
            figures = ", ".join(f"{k} {best[k]:.4f}" for k in ("val_loss", "val_acc", "val_f1") if k in best)
            lines.append(f"kept epoch {best['epoch']} ({'best ' + monitor if monitor else 'final epoch'}): {figures}")
        if checkpoint is not None and checkpoint.best_model_path:
            lines.append(f"best checkpoint: {checkpoint.best_model_path}")
        lines.append(f"seed: {run_seed()} (also in the run's config.yaml)")
        if self.epoch_seconds:
            mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
            each = f" ({', '.join(f'{s:.1f}' for s in self.epoch_seconds)})" if len(self.epoch_seconds) > 1 else ""
            lines.append(f"time per epoch: {mean:.1f} s over {len(self.epoch_seconds)} epoch(s){each}")
        frozen = getattr(pl_module, "frozen_outputs", None)
        if frozen is not None and frozen.reused:
            lines.append(
                f"the frozen layers' outputs of the first epoch were reused in {frozen.reused} batches "
                "(--model.frozen_outputs_gb 0: computed again every epoch)"
            )
        if isinstance(trainer.logger, TensorBoardLogger):
            if best is not None:  # the kept epoch's figures beside the settings, so runs compare in the HPARAMS tab
                trainer.logger.log_hyperparams(
                    run_hparams(pl_module, trainer),
                    {
                        "hp_best_val_loss": best.get("val_loss", float("nan")),
                        "hp_best_val_acc": best.get("val_acc", float("nan")),
                    },
                )
            trainer.logger.experiment.flush()
            try:
                lines.append(
                    f"curves: {plot_runs([Path(trainer.logger.log_dir)], Path(trainer.logger.log_dir) / 'curves.png')}"
                )
            except AGNewsError as err:
                lines.append(f"no curves: {err}")
        print("\n".join(lines), flush=True)


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


class TestReport(Callback):
    """After `test`, write `test_report.json` and `test_report.md` beside the evaluated checkpoint (or in the
    run folder when the model was not loaded from one)."""

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if results is None:
            return
        report = build_report(pl_module, trainer, results, seconds=time.perf_counter() - self._start)
        folder = Path(trainer.ckpt_path).parent if trainer.ckpt_path else Path(trainer.log_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "test_report.md").write_text(render_markdown(report))
        print(f"agnews: test report written to {folder / 'test_report.md'}", flush=True)
        if isinstance(trainer.logger, TensorBoardLogger):
            log_to_tensorboard(trainer.logger, pl_module, report, results)


class PredictionWriter(BasePredictionWriter):
    """Writes `predict`'s output file, in input order, and applies the int8 fast path if asked."""

    def __init__(self, output: str | None = None, overwrite: bool = False, int8: bool = False):
        """
        Args:
            output: the predictions file, `.csv` or `.jsonl`; its folder must exist.
            overwrite: replace `output` if it exists.
            int8: dynamic int8 quantization of the linear layers (CPU; see docs/performance.md, Inference).
        """
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite
        self.int8 = int8
        self._path: Path | None = None  # the checked output file, set in setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.output is None:
            raise AGNewsError("predict writes to a file: pass --prediction.output FILE (.csv or .jsonl)")
        self._path = check_output(self.output, self.overwrite)
        if trainer.world_size > 1:
            raise AGNewsError("predict runs in one process; leave --trainer.devices at 1")
        if self.int8 and is_bf16(trainer.precision):
            raise AGNewsError(
                "choose one fast path: --prediction.int8 true with --trainer.precision 32-true, or bf16 alone"
            )

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.int8:
            quantize_int8(pl_module.model)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        dm = trainer.datamodule
        names = pl_module.label_names
        if predictions:
            found = in_original_order(predictions)["probs"]
        else:
            found = torch.empty(0, len(names))
        if dm.predict_texts is not None:  # a file of texts: every input row, blank ones unpredicted
            probs = torch.full((len(dm.predict_texts), len(names)), float("nan"))
            probs[dm.predict_rows] = found
            write_predictions(self._path, names, probs, range(len(probs)), texts=dm.predict_texts)
        else:  # the data set's test split: row ids and true labels
            rows = dm.test_set.rows
            write_predictions(self._path, names, found, rows.tolist(), true_labels=dm.test_set.labels[rows])
        print(f"agnews: {len(found):,} predictions written to {self.output}", flush=True)
