"""The fit's and the test's reports as Lightning callbacks: the epoch-time estimate, the fit summary, the test
report. (Checkpoints: agnews.training.checkpointing; `predict`'s output: agnews.inference.writer.)"""

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from agnews.errors import AGNewsError
from agnews.training.curves import plot_runs
from agnews.training.report import build_report, log_to_tensorboard, render_markdown, run_hparams, run_seed


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
        reused = getattr(getattr(pl_module, "fast", None), "reused", 0)
        if reused:
            lines.append(
                f"the frozen layers' outputs of the first epoch were reused in {reused} batches "
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
