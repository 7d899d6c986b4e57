"""Command line: `python -m agnews.train {fit,validate,test,predict} [--config configs/...yaml] [--print_config]`."""

import shutil
import sys
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor

from agnews.backbone import CHECKPOINT_FILES_KEY, files_to_folder
from agnews.callbacks import EpochEstimate, FitSummary, PredictionWriter, SafeCheckpoint, TestReport
from agnews.checkpoints import LOG_ROOT, find_checkpoint, read_checkpoint, runs
from agnews.data import AGNewsDataModule
from agnews.errors import AGNewsError, TrainingInterrupted
from agnews.internals import CLIHooks
from agnews.model import AGNewsClassifier
from agnews.precision import AUTO, choose
from agnews.sources import choose_defaults

EVAL_SUBCOMMANDS = ("validate", "test", "predict")


class Trainer(L.Trainer):
    """Lightning's Trainer, plus `precision="auto"` (the default): bf16-mixed where the hardware runs bf16
    natively, 32-true elsewhere, said in one line. A named precision is passed on as it is."""

    def __init__(self, *args, accelerator="auto", precision: str | int | None = AUTO, **kwargs):
        super().__init__(*args, accelerator=accelerator, precision=choose(precision, accelerator), **kwargs)


class AGNewsCLI(CLIHooks):
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

    def _log_root(self, config) -> Path:
        return Path(config.trainer.get("default_root_dir") or ".") / LOG_ROOT

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        config = self.config[sub]
        self._given = given_settings(args, sub)
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
        self._runs_before = set(runs(self._log_root(config)))
        if sub == "predict" and config.prediction.int8 and str(config.trainer.precision) == AUTO:
            config.trainer.precision = "32-true"  # int8 layers take fp32 inputs, not bf16
        if sub in EVAL_SUBCOMMANDS:
            self._settings_from_checkpoint(config)
        else:
            self._choose_sources(config)

    def _choose_sources(self, config) -> None:
        model, data, line = choose_defaults(self._given["model"], self._given["data"])
        if line is None:
            return
        print(f"agnews: {line}", file=sys.stderr, flush=True)
        for key, value in model.items():
            config.model[key] = value
        for key, value in data.items():
            config.data[key] = value
        config.model.chosen_by = line
        config.data.tokenizer = config.model.backbone

    def on_run_failed(self, subcommand: str, error: BaseException) -> None:
        # a run stopped by bad input leaves no run folder behind, unless it already holds a checkpoint
        if not isinstance(error, AGNewsError):
            return
        for run in set(runs(self._log_root(self.config[subcommand]))) - self._runs_before:
            if not any(run.rglob("*.ckpt")):
                shutil.rmtree(run, ignore_errors=True)

    def _settings_from_checkpoint(self, config) -> None:
        checkpoint = self._checkpoint
        # data settings the user did not give come from the run that wrote the checkpoint
        saved = checkpoint.get("datamodule_hyper_parameters", {})
        inherited = []
        for key, value in saved.items():
            if key in config.data and key not in ("tokenizer", *self._given["data"]) and config.data[key] != value:
                config.data[key] = value
                inherited.append(f"{key}={value}")
        if inherited:
            print(f"agnews: from the checkpoint's run: {', '.join(inherited)}", file=sys.stderr, flush=True)
        files = checkpoint.get(CHECKPOINT_FILES_KEY)
        if not files:
            raise AGNewsError(f"checkpoint {config.ckpt_path} carries no tokenizer; it was not written by agnews")
        config.data.tokenizer = files_to_folder(files, config.data.cache_dir)


def given_settings(args, sub: str) -> dict[str, set[str]]:
    """The model and data settings the user gave, in `--config` files or as flags (`--model.x`, `--data.x`,
    `--model FILE_OR_DICT`), as opposed to those left at their defaults. (jsonargparse's parse without defaults
    cannot tell, since the backbone -> tokenizer link requires its source.)"""
    given: dict[str, set[str]] = {"model": set(), "data": set()}
    if isinstance(args, dict):
        args = args.get(sub, args)
        for part in given:
            given[part] |= set(args.get(part) or {})
        return given
    items = [str(a) for a in (sys.argv[1:] if args is None else args)]

    def from_mapping(mapping, part=None) -> None:
        if not isinstance(mapping, dict):
            return
        mapping = mapping.get(sub, mapping) if isinstance(mapping.get(sub), dict) else mapping
        for name in [part] if part else list(given):
            section = mapping if part else mapping.get(name)
            given[name] |= set(section) if isinstance(section, dict) else set()

    def load(value: str):
        path = Path(value).expanduser()
        return yaml.safe_load(path.read_text()) if path.is_file() else yaml.safe_load(value)

    for i, item in enumerate(items):
        key, eq, value = item.partition("=")
        value = value if eq else (items[i + 1] if i + 1 < len(items) else "")
        if key == "--config":
            from_mapping(load(value))
        elif key in ("--model", "--data"):
            from_mapping(load(value), key[2:])
        elif key.startswith(("--model.", "--data.")):
            part, _, name = key[2:].partition(".")
            given[part].add(name.split(".")[0])
    return given


def cli_main(args=None) -> AGNewsCLI:
    try:
        return AGNewsCLI(
            AGNewsClassifier,
            AGNewsDataModule,
            trainer_class=Trainer,
            seed_everything_default=42,
            trainer_defaults={
                "accelerator": "cpu",
                "devices": 1,
                "max_epochs": 2,
                "precision": AUTO,
                "log_every_n_steps": 50,
                "callbacks": [
                    LearningRateMonitor(logging_interval="step"),
                    EpochEstimate(),
                    FitSummary(),
                    TestReport(),
                ],
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
