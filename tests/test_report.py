import json
from types import SimpleNamespace

import pytest
import torch

from agnews.modeling.module import AGNewsClassifier
from agnews.train import cli_main
from agnews.training.report import build_report, render_markdown
from tests.test_train import tiny_args


def test_report_numbers_match_a_hand_checked_example(tiny_bert):
    model = AGNewsClassifier(backbone=str(tiny_bert), class_names=["A", "B", "C", "D"])
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    preds = torch.tensor([0, 0, 1, 1, 1, 2, 3, 2, 3, 0])
    model.test_details.update(torch.nn.functional.one_hot(preds, 4).float(), labels)
    trainer = SimpleNamespace(
        ckpt_path="run/checkpoints/best.ckpt",
        datamodule=None,
        callback_metrics={"test_acc": torch.tensor(0.7), "test_loss": torch.tensor(0.5)},
    )
    report = build_report(model, trainer, model.test_details.compute(), seconds=1.0)

    assert report["confusion_matrix"]["counts"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 2, 1], [1, 0, 0, 1]]
    by_class = {c["name"]: c for c in report["classes"]}
    # A: 3 predicted, 2 right, 3 true; B: 3 predicted, 2 right, 2 true; C: 2/2 right of 3; D: 1 of 2 of 2
    assert by_class["A"]["precision"] == pytest.approx(2 / 3) and by_class["A"]["recall"] == pytest.approx(2 / 3)
    assert by_class["B"]["precision"] == pytest.approx(2 / 3) and by_class["B"]["f1"] == pytest.approx(0.8)
    assert by_class["C"]["precision"] == pytest.approx(1.0) and by_class["C"]["f1"] == pytest.approx(0.8)
    assert by_class["D"]["f1"] == pytest.approx(0.5)
    assert [c["support"] for c in report["classes"]] == [3, 2, 3, 2]
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.8 + 0.5) / 4)
    assert report["rows"] == 10 and report["accuracy"] == pytest.approx(0.7)
    # imbalanced classes (3, 2, 3, 2): plain accuracy 7/10, balanced accuracy (mean recall) differs
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 1 / 2) / 4)
    logits = torch.nn.functional.one_hot(preds, 4).float()
    for metric in (model.train_acc, model.val_acc, model.test_acc):  # every stage logs plain accuracy
        assert float(metric(logits, labels)) == pytest.approx(0.7)
    markdown = render_markdown(report)
    assert "| A | 2 | 1 | 0 | 0 |" in markdown and "| B | 0.6667 | 1.0000 | 0.8000 | 2 |" in markdown


def test_cli_test_writes_the_report_beside_the_checkpoint(tiny_bert, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.max_epochs", "1"])
    cli = cli_main(["test", *tiny_args(tiny_bert, data_dir, tmp_path)])
    folder = next((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("epoch=*.ckpt")).parent
    report = json.loads((folder / "test_report.json").read_text())
    assert report["rows"] == 80 and report["dataset"] == str(data_dir)
    assert report["accuracy"] == pytest.approx(float(cli.trainer.callback_metrics["test_acc"]))
    assert [c["name"] for c in report["classes"]] == ["World", "Sports", "Business", "Sci/Tech"]
    assert sum(map(sum, report["confusion_matrix"]["counts"])) == 80
    assert "# Test report" in (folder / "test_report.md").read_text()
    assert {"test_f1", "test_f1_Sci_Tech"} <= set(cli.trainer.callback_metrics)


def test_tensorboard_gets_confusion_image_and_hparams(tiny_bert, data_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    cli_main(["fit", *tiny_args(tiny_bert, data_dir, tmp_path), "--trainer.max_epochs", "1"])
    cli_main(["test", *tiny_args(tiny_bert, data_dir, tmp_path)])
    fit_events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0")).Reload()
    assert {"hp_best_val_loss", "hp_best_val_acc"} <= set(fit_events.Tags()["scalars"])
    test_events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_1")).Reload()
    assert "test_confusion_matrix" in test_events.Tags()["images"]
    assert {"hp_test_acc", "test_f1", "test_f1_World"} <= set(test_events.Tags()["scalars"])
