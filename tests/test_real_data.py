"""A few hundred rows of the real AG News copy with the real offline MiniLM encoder."""

import pytest

from agnews.train import cli_main
from tests.conftest import ROOT, SHARED_AG_NEWS


@pytest.mark.slow
def test_minilm_briefly_trained_beats_chance_on_held_out_test_rows(minilm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--data.dataset", str(SHARED_AG_NEWS), "--data.cache_dir", str(tmp_path / "cache"),
              "--trainer.enable_progress_bar", "false", "--data.test_size", "400"]
    cli_main(["fit", "--config", str(ROOT / "configs" / "offline.yaml"), *common,
              "--data.train_size", "320", "--data.val_size", "64", "--data.max_length", "64",
              "--model.learning_rate", "3e-4", "--trainer.max_epochs", "2"])
    cli = cli_main(["test", *common])
    accuracy = float(cli.trainer.callback_metrics["test_acc"])
    assert accuracy > 0.6, f"4 classes: chance is 0.25, got {accuracy:.3f}"
