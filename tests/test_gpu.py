"""The same code on a GPU (skipped where none is present; CI has none): `--trainer.accelerator gpu` with
precision `auto`."""

import pytest
import torch

from agnews.train import cli_main
from tests.test_train import tiny_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_fit_and_test_on_a_gpu_with_precision_auto(tiny_bert, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_bert, data_dir, tmp_path)
    cli = cli_main(["fit", *args, "--trainer.accelerator", "gpu", "--trainer.max_epochs", "2"])
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    assert cli.trainer.precision == expected and "precision auto -> " + expected + " (GPU)" in capsys.readouterr().err
    gpu = cli_main(["test", *args, "--trainer.accelerator", "gpu"])
    cpu = cli_main(["test", *args, "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"])
    assert float(gpu.trainer.callback_metrics["test_acc"]) == pytest.approx(
        float(cpu.trainer.callback_metrics["test_acc"]), abs=0.05
    )
