"""A few hundred rows of the real AG News copy with the real offline encoders (MiniLM, and the recipe's MPNet)."""

import csv
import json

import pandas as pd
import pytest

from agnews import sources
from agnews.export import main as export_main
from agnews.train import cli_main
from tests.conftest import BUNDLED_AG_NEWS, ROOT
from tests.test_export import pipeline_labels


def common(tmp_path) -> list[str]:
    return ["--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false"]


def fit_then_test(config: str, tmp_path, *fit_args: str, dataset: bool = True, test_rows: int = 400):
    """`fit` a config briefly on the real data and test its best checkpoint on `test_rows` test rows, in one
    process as `make fit` does (`--test true`)."""
    named = ["--data.dataset", str(BUNDLED_AG_NEWS)] if dataset else []
    configs = ["--config", str(ROOT / "configs" / config)]  # each config alone: an override of the defaults
    cli = cli_main(
        ["fit", *configs, *named, *common(tmp_path), "--data.test_size", str(test_rows), "--test", "true", *fit_args]
    )
    assert cli.trainer.ckpt_path == cli.trainer.checkpoint_callback.best_model_path
    return cli, float(cli.trainer.callback_metrics["test_acc"])


@pytest.mark.slow
def test_recipe_trains_the_upstream_mpnet_from_its_packages(mpnet, tmp_path, monkeypatch):
    # the recipe's own config and encoder (checked against the upstream weights' hash on unpacking), one epoch of
    # 256 rows of 32 tokens (0.85 test accuracy with seeds 42 and 7). A base-size encoder in fp32 is this suite's
    # slowest test, and each epoch writes two 1.3-GB checkpoints (weights and Adam's moments): 2 epochs of 160
    # rows took 104 s on an AVX2-only CPU, 1 of 256 takes 70 s
    monkeypatch.chdir(tmp_path)
    cli, accuracy = fit_then_test(
        "recipe.yaml",
        tmp_path,
        "--data.train_size",
        "256",
        "--data.val_size",
        "32",
        "--data.max_length",
        "32",
        "--model.learning_rate",
        "2e-4",
        "--trainer.max_epochs",
        "1",
        test_rows=200,
    )
    assert cli.model.hparams.backbone == mpnet
    assert accuracy > 0.6, f"4 classes: chance is 0.25, got {accuracy:.3f}"


@pytest.mark.slow
def test_default_run_without_the_hub_trains_minilm_and_exports_to_a_stock_pipeline(minilm, tmp_path, monkeypatch):
    # what `make fit` does on a machine without the hub: nothing named, so agnews chooses (HF_HUB_OFFLINE=1 here)
    # the offline default, first-token MiniLM on the bundled rows (configs/offline.yaml names the same: test_configs)
    monkeypatch.chdir(tmp_path)
    sources.hub_status.cache_clear()
    cli, accuracy = fit_then_test(
        "default.yaml",
        tmp_path,
        "--data.train_size",
        "320",
        "--data.val_size",
        "64",
        "--data.max_length",
        "64",
        "--trainer.max_epochs",
        "2",
        dataset=False,
    )
    assert cli.model.hparams.backbone == minilm and cli.model.hparams.pooling == "cls"
    assert cli.datamodule.hparams.dataset == str(sources.BUNDLED_DATASET)
    assert "offline default" in cli.model.hparams.chosen_by
    # it distils from the shipped teacher file, which matches the bundled rows
    assert cli.datamodule.hparams.teacher == str(sources.BUNDLED_TEACHER) and cli.datamodule.teacher_info is not None
    assert accuracy > 0.6, f"4 classes: chance is 0.25, got {accuracy:.3f}"

    # predict on 400 official test rows (precision auto: bf16 where native), and a stock pipeline on the export
    # (fp32, truncating where the run did: the export's tokenizer keeps its max_length; a stock pipeline takes
    # about 10 s per 1,000 rows here)
    out = tmp_path / "predictions.csv"
    cli_main(["predict", *common(tmp_path), "--data.test_size", "400", "--prediction.output", str(out)])
    with open(out, newline="") as f:
        predicted = {int(row["id"]): row["label"] for row in csv.DictReader(f)}
    assert len(predicted) == 400
    export_main([str(tmp_path / "exported")])
    texts = pd.read_parquet(BUNDLED_AG_NEWS / "test.parquet")["text"]
    ids = sorted(predicted)
    # the default's first-token model exports as the stock class: no code in the folder, no trust_remote_code
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "bert"
    assert not (tmp_path / "exported" / "pooling.py").exists()
    result = pipeline_labels(tmp_path / "exported", [texts[i] for i in ids], tmp_path, trust_remote_code=False)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = json.loads(result.stdout.strip().splitlines()[-1])
    agree = sum(label == predicted[i] for label, i in zip(labels, ids, strict=True)) / len(ids)
    assert agree >= 0.995, f"the pipeline agrees with predict on {agree:.2%} of 400 rows"  # 2 rows at most
