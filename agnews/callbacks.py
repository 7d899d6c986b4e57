import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from agnews.errors import AGNewsError
from agnews.plot import plot_runs
from agnews.report import run_hparams, run_seed


class FitSummary(Callback):
    """At the end of `fit`, print the best validation figures, where the best checkpoint is, and time per epoch,
    and draw the run's curves into `curves.png` in its folder."""

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self.val_history: list[dict[str, float]] = []
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        entry = {k: float(metrics[k]) for k in ("val_loss", "val_acc") if k in metrics}
        self.val_history.append({"epoch": trainer.current_epoch, **entry})

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lines = ["", "== fit summary =="]
        scored = [v for v in self.val_history if "val_loss" in v]
        if scored:
            best = min(scored, key=lambda v: v["val_loss"])
            lines.append(f"best val_loss {best['val_loss']:.4f}, val_acc {best.get('val_acc', float('nan')):.4f} (epoch {best['epoch']})")
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is not None and checkpoint.best_model_path:
            lines.append(f"best checkpoint: {checkpoint.best_model_path}")
        lines.append(f"seed: {run_seed()} (also in the run's config.yaml)")
        if self.epoch_seconds:
            mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
            lines.append(f"time per epoch: {mean:.1f} s over {len(self.epoch_seconds)} epoch(s)")
        if isinstance(trainer.logger, TensorBoardLogger):
            if scored:  # final figures beside the settings, so runs compare side by side in the HPARAMS tab
                trainer.logger.log_hyperparams(run_hparams(pl_module, trainer),
                                               {"hp_best_val_loss": best["val_loss"], "hp_best_val_acc": best.get("val_acc", 0.0)})
            trainer.logger.experiment.flush()
            try:
                lines.append(f"curves: {plot_runs([Path(trainer.logger.log_dir)], Path(trainer.logger.log_dir) / 'curves.png')}")
            except AGNewsError as err:
                lines.append(f"no curves: {err}")
        print("\n".join(lines), flush=True)
