"""Command line: `python -m agnews.train {fit,validate,test,predict} [--config configs/...yaml] [--print_config]`."""

import shutil
import sys
import warnings
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins import CheckpointIO, LayerSync, Precision
from lightning.pytorch.trainer.states import TrainerStatus

from agnews.checkpoints import LOG_ROOT, find_checkpoint, read_checkpoint, runs
from agnews.data.datamodule import AGNewsDataModule
from agnews.errors import AGNewsError, TrainingInterrupted
from agnews.inference.writer import PredictionWriter
from agnews.internals import CLIHooks, no_lightning_tips
from agnews.modeling.backbone import CHECKPOINT_FILES_KEY, files_to_folder
from agnews.modeling.module import AGNewsClassifier
from agnews.precision import AUTO, choose, choose_batch, on_cpu
from agnews.sources import choose_defaults
from agnews.training.bf16_weights import BF16Weights
from agnews.training.budget import TimeBudget
from agnews.training.callbacks import EpochEstimate, FitSummary, TestReport
from agnews.training.checkpointing import SafeCheckpoint

EVAL_SUBCOMMANDS = ("validate", "test", "predict")

# notices that say nothing about the run: Lightning 2.6 calling what torch 2.13 deprecates; the model summary's size
QUIET = (".*isinstance.treespec, LeafSpec", "Precision .* is not supported by the model summary")
# Lightning's own plugin kinds, named so that the CLI can build one from a class path (`--trainer.plugins`)
PluginInput = Precision | ClusterEnvironment | CheckpointIO | LayerSync | str
# the data settings that follow the model's (`link_arguments`): never set on their own
LINKED = ("tokenizer", "num_classes")


class Trainer(L.Trainer):
    """Lightning's Trainer, plus `precision="auto"` (the default): bf16 where the hardware runs it natively
    (on a CPU with the weights kept in bf16 between steps, agnews.training.bf16_weights), 32-true elsewhere, said in one
    line. A named precision or precision plugin is passed on as it is (`bf16-mixed`: Lightning's own autocast)."""

    def __init__(
        self,
        *args,
        accelerator="auto",
        precision: str | int | None = AUTO,
        plugins: PluginInput | list[PluginInput] | None = None,
        **kwargs,
    ):
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        auto = precision is None or str(precision) == AUTO
        if auto and any(isinstance(p, Precision) for p in plugins):
            precision = None  # the plugin decides
        else:
            precision = choose(
                precision, accelerator, fast_on_cpu="bf16 weights with fp32 masters (agnews.training.bf16_weights)"
            )
            if auto and precision == "bf16-mixed" and on_cpu(accelerator):
                precision, plugins = None, [*plugins, BF16Weights()]
        super().__init__(*args, accelerator=accelerator, precision=precision, plugins=plugins or None, **kwargs)
        if not self.loggers:  # `--trainer.logger false`: no curves to draw, and Lightning's monitor refuses to start
            self.callbacks = [c for c in self.callbacks if not isinstance(c, LearningRateMonitor)]

    def fit(
        self,
        model: L.LightningModule,
        train_dataloaders=None,
        val_dataloaders=None,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        test: bool = False,
    ) -> None:
        """Lightning's `fit`, then, with `test`, Lightning's `test` of the best checkpoint in this process: the same
        figures and report as `python -m agnews.train test` run next, without a second start."""
        if isinstance(train_dataloaders, L.LightningDataModule):  # Lightning takes a datamodule in either place
            train_dataloaders, datamodule = None, train_dataloaders
        if test:  # refused before training, not after it
            if self.checkpoint_callback is None:
                raise AGNewsError("--test true tests the best checkpoint: leave checkpointing on")
            if self.limit_val_batches == 0:
                raise AGNewsError(
                    "--test true tests the checkpoint validation picks: leave validation on (limit_val_batches)"
                )
            if datamodule is None:
                raise AGNewsError("test after fit takes its test split from a datamodule: pass datamodule=")
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
        if not test or self.state.status != TrainerStatus.FINISHED:
            return
        if not self.checkpoint_callback.best_model_path:
            raise AGNewsError(
                "fit stopped before its first validation, so it kept no best checkpoint to test; "
                "`python -m agnews.train test --ckpt_path last` tests its last weights"
            )
        self.test(model, datamodule=datamodule, ckpt_path="best", weights_only=weights_only)


class AGNewsCLI(CLIHooks):
    """LightningCLI whose defaults are the run that will happen: the encoder and data chosen at start (hub or
    offline default), or, for `test`/`predict` and a resumed `fit`, the settings of the checkpoint's run. Both
    become parser defaults before the final parse, so anything typed or in a `--config` file still wins, and
    `--print_config` prints what will run."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(SafeCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "{epoch}-{step}-{val_loss:.4f}-{val_acc:.4f}",
                # chosen at the start of `fit` (agnews.sources); naming either turns the choice off for it
                "model.backbone": AUTO,
                "data.dataset": AUTO,
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        # one name for both, so the tokenizer can never disagree with the encoder
        parser.link_arguments("model.backbone", "data.tokenizer")
        # integer labels stand for as many classes as the head has
        parser.link_arguments("model.num_classes", "data.num_classes")
        # jsonargparse's own --print_config prints before agnews has chosen anything: this one prints after
        parser.add_argument("--print_config", action="store_true", help="Print the settings that will run, and exit.")

    def _log_root(self, config) -> Path:
        return Path(config.trainer.get("default_root_dir") or ".") / LOG_ROOT

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        first = self.config[sub]
        defaults = {}
        self._checkpoint = None
        if sub in EVAL_SUBCOMMANDS or first.get("ckpt_path"):
            # resolved before instantiation, so LightningCLI rebuilds the model from the checkpoint's own
            # hyperparameters (backbone config included) instead of downloading the backbone named on the CLI
            ckpt_path = str(find_checkpoint(self._log_root(first), first.get("ckpt_path") or "best"))
            self._checkpoint = read_checkpoint(ckpt_path)  # refuses a damaged file before Lightning reads it
            print(f"agnews: {sub} uses checkpoint {ckpt_path}", file=sys.stderr, flush=True)
            defaults = self._checkpoint_defaults(first, Path(ckpt_path), resumes=sub == "fit")
        if sub == "fit" and first.trainer.get("max_time") and not first.get("ckpt_path"):
            defaults["trainer.max_epochs"] = -1  # the budget decides the length; a typed max_epochs still caps it
            # the budget anneals the rate to zero at its last step, and validation loss turns up epochs before
            # validation accuracy stops climbing: a budgeted run keeps its best val_acc (a tie: the later model)
            defaults |= {"checkpoint.monitor": "val_acc", "checkpoint.mode": "max"}
        if sub == "fit" and not first.get("ckpt_path"):
            model, data, line = choose_defaults(first.model.backbone == AUTO, first.data.dataset == AUTO)
            if line is not None:
                print(f"agnews: {line}", file=sys.stderr, flush=True)
                defaults |= {"model.chosen_by": line}
                defaults |= {f"model.{k}": v for k, v in model.items()}
                defaults |= {f"data.{k}": v for k, v in data.items()}
        if defaults:
            parser.set_defaults({f"{sub}.{key}": value for key, value in defaults.items()})
            self.config = parser.parse_args(args) if not isinstance(args, dict) else parser.parse_object(args)
        config = self.config[sub]
        if self._checkpoint is not None:
            config.ckpt_path = ckpt_path
        for part, name in (("model", "backbone"), ("data", "dataset")):
            if config[part][name] == AUTO and f"{part}.{name}" in defaults:  # `auto` written in a config file
                config[part][name] = defaults[f"{part}.{name}"]
        config.data.tokenizer, config.data.num_classes = config.model.backbone, config.model.num_classes  # links
        inherited = [
            f"{key}={config.data[key]}"
            for key in vars(config.data)
            if key not in LINKED
            and self._checkpoint is not None
            and config.data[key] != first.data[key]
            and not (key == "batch_size" and first.data[key] is None)  # left to the machine: no news
        ]
        if inherited:
            print(f"agnews: from the checkpoint's run: {', '.join(inherited)}", file=sys.stderr, flush=True)
        if sub == "fit" and config.data.batch_size is None:  # the machine's batch, the rate scaled with it
            batch, rate = choose_batch(config.trainer.precision, config.trainer.accelerator, config.model.learning_rate)
            config.data.batch_size, config.model.learning_rate = batch, rate  # into config.yaml and checkpoints
        if sub == "fit" and config.trainer.get("max_time") and not config.get("print_config"):
            rule = config.checkpoint.monitor
            kept = f"the best {rule} ({config.checkpoint.mode}; a tie keeps the later)" if rule else "the final model"
            print(f"agnews: budget run: the checkpoint kept is {kept}", file=sys.stderr, flush=True)
        if config.get("print_config"):
            dump = yaml.safe_load(parser.dump(self.config, skip_link_targets=False))[sub]
            dump.pop("print_config", None)
            sys.stdout.write(yaml.safe_dump(dump, sort_keys=False))
            raise SystemExit(0)

    def _checkpoint_defaults(self, first, ckpt_path: Path, resumes: bool) -> dict:
        """The model and data settings of the checkpoint's run, as `model.x`/`data.x` defaults."""
        checkpoint = self._checkpoint
        defaults = {}
        for part, saved in (
            ("model", checkpoint.get("hyper_parameters", {})),
            ("data", checkpoint.get("datamodule_hyper_parameters", {})),
        ):
            defaults |= {f"{part}.{k}": v for k, v in saved.items() if k in vars(first[part]) and k not in LINKED}
        # a resumed fit also keeps its run's checkpoint rule (monitor, mode, ...), so ModelCheckpoint finds its state
        saved_config = ckpt_path.resolve().parent.parent / "config.yaml"
        if resumes and saved_config.is_file():
            rule = (yaml.safe_load(saved_config.read_text()) or {}).get("checkpoint") or {}
            defaults |= {f"checkpoint.{k}": v for k, v in rule.items() if k in vars(first.checkpoint)}
        return defaults

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub is None:
            return
        config = self.config[sub]
        self._runs_before = set(runs(self._log_root(config)))
        if sub in EVAL_SUBCOMMANDS:  # the fit's checkpoint rule, restored with the weights, picks nothing here
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
        # Lightning refuses it beside the CLI's own checkpoint callback, with a traceback
        if config.trainer.get("enable_checkpointing") is False:
            raise AGNewsError(
                "--trainer.enable_checkpointing false: checkpoints are set by --checkpoint.*; "
                "for none, --checkpoint.save_top_k 0 --checkpoint.save_last false"
            )
        if sub == "predict" and config.prediction.int8 and str(config.trainer.precision) == AUTO:
            config.trainer.precision = "32-true"  # int8 layers take fp32 inputs, not bf16
        if config.get("ckpt_path"):
            files = self._checkpoint.get(CHECKPOINT_FILES_KEY)
            if not files:
                raise AGNewsError(f"checkpoint {config.ckpt_path} carries no tokenizer; it was not written by agnews")
            config.data.tokenizer = files_to_folder(files, config.data.cache_dir)
        if sub == "fit" and config.get("ckpt_path"):
            self._resume_in_the_same_run(config)

    def _resume_in_the_same_run(self, config) -> None:
        """A resumed fit logs and checkpoints into the run folder it resumes, so ModelCheckpoint restores its whole
        state (the best checkpoint and its score, not only its path) and the curves continue where they stopped."""
        run = Path(config.ckpt_path).resolve().parent.parent
        log_root = self._log_root(config).resolve()
        if config.trainer.get("logger") not in (None, True) or run.parent != log_root or run not in runs(log_root):
            return  # a logger of the user's own, or a checkpoint outside this project's runs: a new run folder
        config.trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            init_args=Namespace(save_dir=str(log_root.parent), name=LOG_ROOT.name, version=int(run.name.split("_")[1])),
        )
        print(f"agnews: resuming in {run}", file=sys.stderr, flush=True)

    def on_run_failed(self, subcommand: str, error: BaseException) -> None:
        # a run stopped by bad input leaves no run folder behind, unless it already holds a checkpoint
        if not isinstance(error, AGNewsError):
            return
        for run in set(runs(self._log_root(self.config[subcommand]))) - self._runs_before:
            if not any(run.rglob("*.ckpt")):
                shutil.rmtree(run, ignore_errors=True)


def cli_main(args=None, callbacks=()) -> AGNewsCLI:
    """`callbacks`: objects added to the default ones (agnews.search hands each trial its pruning callback)."""
    with warnings.catch_warnings(), no_lightning_tips():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        return _cli(args, callbacks)


def _cli(args, callbacks) -> AGNewsCLI:
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
                    TimeBudget(),
                    FitSummary(),
                    TestReport(),
                    *callbacks,
                ],
            },
            save_config_kwargs={"overwrite": True},
            # agnews prints the config itself, once the encoder and data are chosen (AGNewsCLI)
            parser_kwargs={"print_config": None, **{sub: {"print_config": None} for sub in ("fit", *EVAL_SUBCOMMANDS)}},
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
