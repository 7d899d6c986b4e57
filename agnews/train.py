"""Command line: `python -m agnews.train {fit,validate,test,predict} [--config configs/...yaml] [--print_config]`."""

import shutil
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI

from agnews.backbone import CHECKPOINT_FILES_KEY, files_to_folder
from agnews.callbacks import FitSummary
from agnews.checkpoints import SafeCheckpoint, find_checkpoint, read_checkpoint, runs
from agnews.data import AGNewsDataModule
from agnews.errors import AGNewsError, TrainingInterrupted
from agnews.inference import PredictionWriter
from agnews.model import AGNewsClassifier
from agnews.report import TestReport

EVAL_SUBCOMMANDS = ("validate", "test", "predict")


def cpu_supports_bf16() -> bool:
    """Native bf16 matrix units (AVX512-BF16 or AMX): without them bf16 on a CPU is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class AGNewsCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SafeCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "{epoch}-{step}-{val_loss:.4f}-{val_acc:.4f}",
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        # one name for both, so the tokenizer can never disagree with the encoder
        parser.link_arguments("model.backbone", "data.tokenizer")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":  # fast inference paths are opt-in: --trainer.precision bf16-mixed, --prediction.int8
            parser.set_defaults({"trainer.precision": "32-true"})
        return parser

    def _log_root(self, config) -> Path:
        return Path(config.trainer.get("default_root_dir") or ".") / "lightning_logs"

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        config = self.config[sub]
        if sub in EVAL_SUBCOMMANDS or config.get("ckpt_path"):
            # resolved before instantiation, so LightningCLI rebuilds the model from the checkpoint's own
            # hyperparameters (backbone config included) instead of downloading the backbone named on the CLI
            config.ckpt_path = str(find_checkpoint(self._log_root(config), config.get("ckpt_path") or "best"))
            self._checkpoint = read_checkpoint(config.ckpt_path)  # refuses a damaged file before Lightning reads it
            print(f"agnews: {sub} uses checkpoint {config.ckpt_path}", file=sys.stderr, flush=True)

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub is None:
            return
        config = self.config[sub]
        self._resolve_precision(config.trainer)
        if sub in EVAL_SUBCOMMANDS:
            self._settings_from_checkpoint(config, sub)

    def _resolve_precision(self, trainer) -> None:
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        if on_cpu and str(trainer.precision).startswith("bf16") and not cpu_supports_bf16():
            print(f"agnews: this CPU has no native bf16; precision {trainer.precision} -> 32-true", file=sys.stderr, flush=True)
            trainer.precision = "32-true"

    def _settings_from_checkpoint(self, config, sub: str) -> None:
        checkpoint = self._checkpoint
        # data settings the user left at their defaults come from the run that wrote the checkpoint
        saved = checkpoint.get("datamodule_hyper_parameters", {})
        defaults = self._parser(sub).get_defaults().data
        for key, value in saved.items():
            if key in defaults and key != "tokenizer" and config.data[key] == defaults[key]:
                config.data[key] = value
        files = checkpoint.get(CHECKPOINT_FILES_KEY)
        if not files:
            raise AGNewsError(f"checkpoint {config.ckpt_path} carries no tokenizer; it was not written by agnews")
        config.data.tokenizer = files_to_folder(files, config.data.cache_dir)

    def _run_subcommand(self, subcommand: str) -> None:
        # a run that fails on bad input leaves no half-made run folder behind
        log_root = self._log_root(self.config[subcommand])
        before = set(runs(log_root))
        try:
            super()._run_subcommand(subcommand)
        except AGNewsError:
            for run in set(runs(log_root)) - before:
                if not any(run.glob("checkpoints/*.ckpt")):
                    shutil.rmtree(run, ignore_errors=True)
            raise


def cli_main(args=None) -> AGNewsCLI:
    try:
        return AGNewsCLI(
            AGNewsClassifier,
            AGNewsDataModule,
            seed_everything_default=42,
            trainer_defaults={
                "accelerator": "cpu",
                "devices": 1,
                "max_epochs": 5,
                "precision": "bf16-mixed",
                "log_every_n_steps": 50,
                "callbacks": [LearningRateMonitor(logging_interval="step"), FitSummary(), TestReport()],
            },
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except AGNewsError as err:
        print(f"agnews: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingInterrupted as stop:
        print(f"agnews: {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None


if __name__ == "__main__":
    cli_main()
