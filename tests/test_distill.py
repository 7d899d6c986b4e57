"""Distillation: the teacher file (agnews.distill, agnews.data.teacher), the mixed loss (agnews.modeling.module), and a
distilled fit and resume (its DDP run: tests/test_capabilities.py, offline.yaml)."""

import hashlib
import math
import signal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from agnews.checkpoints import read_checkpoint
from agnews.data.teacher import read_teacher, rows_fingerprint, write_teacher
from agnews.distill import main as distill_main
from agnews.inference import Classifier
from agnews.train import cli_main
from tests.conftest import SignalAtStep, fit_args, make_rows, write_split


def test_a_teacher_file_scores_every_training_row_and_names_its_rows_and_checkpoint(tiny_teacher, trained):
    teacher = read_teacher(tiny_teacher)
    texts, labels = make_rows(40, seed=0)
    assert teacher.logits.shape == (160, 4) and teacher.logits.dtype == torch.float32
    assert teacher.labels.tolist() == labels
    assert teacher.meta["rows"] == rows_fingerprint(texts, labels)
    assert teacher.meta["teacher"] == hashlib.sha256(trained.checkpoint.read_bytes()).hexdigest()
    assert teacher.meta["command"].startswith("python -m agnews.distill teacher --ckpt_path")
    # the logits are the checkpoint's own: the same as its Classifier gives
    reference = Classifier.from_checkpoint(trained.checkpoint, precision="32").logits(texts[:20])
    assert torch.allclose(teacher.logits[:20], reference, atol=1e-5)


def test_a_teacher_made_from_other_rows_is_refused_in_one_line(tiny_teacher, tiny_bert, tmp_path, capsys):
    other = tmp_path / "other"
    texts, labels = make_rows(40, seed=0)
    texts[7] = texts[7] + " edited"  # one text differs: the same row count, labels and classes
    write_split(other, "train", texts, labels)
    write_split(other, "test", *make_rows(5, seed=1))
    with pytest.raises(SystemExit) as stop:
        cli_main(["fit", *fit_args(tiny_bert, other, tmp_path, "--data.teacher", str(tiny_teacher))])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "agnews: error: teacher file" in err and "was made from other rows" in err and "Traceback" not in err
    assert not list((tmp_path / "lightning_logs").glob("version_*"))  # nothing left behind as if it were a run


def test_making_a_teacher_refuses_bad_rows_and_never_leaves_a_half_written_file(trained, tmp_path, monkeypatch):
    out = tmp_path / "teacher.parquet"
    bad = tmp_path / "bad"
    texts, labels = make_rows(5, seed=0)
    texts[3] = "   "
    write_split(bad, "train", texts, labels)
    args = ["teacher", "--ckpt_path", str(trained.checkpoint), "--output", str(out), "--precision", "32"]
    assert distill_main([*args, "--dataset", str(bad)]) == 2
    assert not out.exists()
    # a write that fails midway leaves the previous file as it was, and no temporary file
    assert distill_main([*args, "--dataset", str(trained.data)]) == 0
    before = out.read_bytes()

    def half_then_fail(table, where, **kwargs):
        open(where, "wb").write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError):
        write_teacher(out, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), {"rows": "x"})
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [out.name]


def test_the_distillation_loss_equals_a_hand_computed_value(tiny_bert):
    from agnews.modeling.module import AGNewsClassifier

    model = AGNewsClassifier(str(tiny_bert), distill_weight=0.25, distill_temperature=2.0)
    student = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.1, 0.2, 0.3, 0.4]])
    teacher = torch.tensor([[3.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    # by hand: T² · mean over rows of Σ p_t (log p_t - log p_s), both softmax(z / T); CE on the labels
    kd = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        zs = [math.exp(v / 2) for v in s]
        zt = [math.exp(v / 2) for v in t]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        kd += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True)) / 2
    kd *= 4
    ce = (
        sum(
            -math.log(math.exp(s[y]) / sum(math.exp(v) for v in s))
            for s, y in zip(student.tolist(), [0, 2], strict=True)
        )
        / 2
    )
    model.log = lambda *args, **kwargs: None  # outside a Trainer
    model.forward = lambda input_ids, attention_mask, stage=None: student
    batch = {"input_ids": None, "attention_mask": None, "labels": labels, "teacher_logits": teacher}
    loss, _ = model._step(batch, "train", model.train_acc)
    assert float(loss) == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-6)
    batch.pop("teacher_logits")  # validation batches carry none: plain cross-entropy
    assert float(model._step(batch, "val", model.val_acc)[0]) == pytest.approx(ce, rel=1e-6)


def test_a_distilled_fit_logs_both_losses_records_its_teacher_and_resumes_only_with_it(
    tiny_teacher, tiny_bert, data_dir, tmp_path, capsys
):
    flags = fit_args(
        tiny_bert, data_dir, tmp_path, "--data.teacher", str(tiny_teacher), "--model.distill_weight", "0.5"
    )
    first = cli_main(["fit", *flags, "--trainer.max_epochs", "1"])
    metrics = first.trainer.callback_metrics
    mixed = 0.5 * float(metrics["train_ce_epoch"]) + 0.5 * float(metrics["train_kd_epoch"])
    assert float(metrics["train_loss_epoch"]) == pytest.approx(mixed, rel=1e-5)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    recorded = read_checkpoint(last)["AGNewsDataModule"]["teacher"]
    assert recorded["teacher"] == read_teacher(tiny_teacher).meta["teacher"] and recorded["file"] == str(tiny_teacher)

    resumed = cli_main(["fit", *flags, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert resumed.trainer.current_epoch == 2 and "train_kd_epoch" in resumed.trainer.callback_metrics
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # the same run without its teacher: refused, not silently mixed
        cli_main(["fit", *flags, "--data.teacher", "null", "--trainer.max_epochs", "3", "--ckpt_path", str(last)])
    assert stop.value.code == 2
    assert "learned from teacher file" in capsys.readouterr().err


def test_folds_deal_every_class_evenly_and_follow_their_seed():
    from agnews.distill import fold_of_rows

    labels = np.repeat(np.arange(4), [50, 31, 7, 12])
    fold = fold_of_rows(labels, 5, seed=3)
    assert sorted(np.unique(fold).tolist()) == [0, 1, 2, 3, 4]
    for label in range(4):  # every class spread over the folds, one row apart at most
        counts = np.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 1  # and the folds one row apart in size
    assert np.array_equal(fold, fold_of_rows(labels, 5, seed=3)) and not np.array_equal(
        fold, fold_of_rows(labels, 5, 4)
    )


def test_out_of_fold_teachers_score_each_row_with_a_teacher_that_never_saw_it(
    tiny_bert, data_dir, tmp_path, capsys, monkeypatch
):
    import agnews.train
    from agnews.checkpoints import find_checkpoint
    from agnews.distill import fold_of_rows

    config = tmp_path / "teacher.yaml"
    config.write_text(f"trainer:\n  max_epochs: 1\ndata:\n  dataset: {data_dir}\ncheckpoint:\n  monitor: null\n")
    flags = ["--", *fit_args(tiny_bert, data_dir, tmp_path, "--data.val_size", "8")]

    def teacher(name: str) -> list[str]:
        out, work = tmp_path / f"{name}.parquet", tmp_path / name
        return ["teacher", "--config", str(config), "--folds", "2", "--output", str(out), "--workdir", str(work)]

    assert distill_main([*teacher("whole"), "--precision", "32", *flags]) == 0
    made = read_teacher(tmp_path / "whole.parquet")
    texts, labels = make_rows(40, seed=0)
    assert made.meta["rows"] == rows_fingerprint(texts, labels) and made.labels.tolist() == labels
    assert made.meta["folds"] == 2 and len(set(made.meta["fold_checkpoints"])) == 2
    fold = fold_of_rows(np.asarray(labels), 2, seed=42)
    for k in range(2):
        here = tmp_path / "whole" / f"fold-{k + 1}-of-2"
        trained_on = pd.read_parquet(here / "data" / "train.parquet")
        assert trained_on["text"].tolist() == [t for t, f in zip(texts, fold, strict=True) if f != k]
        held = np.flatnonzero(fold == k)
        checkpoint = find_checkpoint(here / "lightning_logs", "best")
        own = Classifier.from_checkpoint(checkpoint, precision="32").logits([texts[i] for i in held])
        assert torch.allclose(made.logits[held], own, atol=1e-5)  # each row scored by the teacher that never saw it
    assert "out-of-fold logits" in capsys.readouterr().err

    # Ctrl-C in the second fold's fit: the command stops as a fit does (130), the finished fold is kept, and the
    # next run resumes the stopped fit from its last.ckpt, to the same teacher as the run that was never stopped
    fits = []

    def second_fit_interrupted(args, callbacks=()):
        fits.append(args)
        stop = (SignalAtStep(2, signal.SIGINT),) if len(fits) == 2 else ()
        return cli_main(args, callbacks=(*callbacks, *stop))

    monkeypatch.setattr(agnews.train, "cli_main", second_fit_interrupted)
    with pytest.raises(SystemExit) as stop:
        distill_main([*teacher("stopped"), "--precision", "32", *flags])
    assert stop.value.code == 130 and not (tmp_path / "stopped.parquet").exists()
    assert distill_main([*teacher("stopped"), "--precision", "32", *flags]) == 0
    assert len(fits) == 3 and "fold 2 of 2: resuming the fit" in capsys.readouterr().err
    for k in range(2):
        assert [p.name for p in (tmp_path / "stopped" / f"fold-{k + 1}-of-2" / "lightning_logs").iterdir()] == [
            "version_0"
        ]
    assert torch.allclose(read_teacher(tmp_path / "stopped.parquet").logits, made.logits, atol=1e-4)


def test_out_of_fold_teachers_refuse_bad_settings_in_one_line(tmp_path, capsys):
    config = tmp_path / "no-data.yaml"
    config.write_text("trainer:\n  max_epochs: 1\n")
    assert distill_main(["teacher", "--config", str(config), "--folds", "1"]) == 2
    assert distill_main(["teacher", "--config", str(config)]) == 2
    assert distill_main(["teacher", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "agnews: error: --folds 1: out-of-fold teachers need 2 folds or more (5 is usual)",
        f"agnews: error: {config} names no dataset; pass --dataset FOLDER_OR_HUB_ID",
        f"agnews: error: config {tmp_path / 'missing.yaml'} does not exist; pass a file such as configs/recipe.yaml",
    ]
    assert not (tmp_path / "teacher.parquet").exists()


@pytest.mark.parametrize("name", ["mpnet-recipe.parquet", "mpnet-recipe-5fold.parquet"])
def test_each_shipped_teacher_file_fits_the_bundled_rows(name):
    from agnews.sources import BUNDLED_DATASET, BUNDLED_TEACHER

    teacher = read_teacher(BUNDLED_TEACHER.parent / name)
    pool = pd.read_parquet(BUNDLED_DATASET / "train.parquet")
    assert teacher.meta["rows"] == rows_fingerprint(pool["text"].tolist(), pool["label"].tolist())
    # the in-fold teacher scored the rows it trained on; the out-of-fold ones, rows they never saw
    assert (teacher.meta.get("folds"), teacher.accuracy() > 0.95) == ((5, False) if "5fold" in name else (None, True))
