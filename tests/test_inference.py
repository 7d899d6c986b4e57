import csv
import json

import pytest
import torch

from agnews.errors import AGNewsError
from agnews.inference import Classifier
from agnews.precision import cpu_bf16
from agnews.train import cli_main
from tests.conftest import make_rows
from tests.test_texts import write_texts

# lengths from 1 to ~40 words, so that length-sorted batches reorder them
TEXTS = [" ".join(words) for words in (["market"] * n + ["profit", "today"] for n in (30, 0, 12, 1, 40, 5))]
TEXTS += make_rows(3, seed=7)[0]


def predict_cli(trained, *args, precision: str | None = "32-true"):
    """`predict` in fp32 unless told (the comparisons below are against the fp32 API)."""
    chosen = ["--trainer.precision", precision] if precision else []
    return cli_main(
        [
            "predict",
            "--ckpt_path",
            str(trained.checkpoint),
            "--data.cache_dir",
            str(trained.cache),
            "--trainer.default_root_dir",
            str(trained.root),
            "--trainer.enable_progress_bar",
            "false",
            *chosen,
            *args,
        ]
    )


def read_output(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def classifier(trained):
    return Classifier.from_checkpoint(trained.checkpoint, precision="32")


@pytest.mark.parametrize("fmt,out", [("txt", "csv"), ("csv", "jsonl"), ("jsonl", "csv"), ("parquet", "jsonl")])
def test_predict_each_format_in_input_order(fmt, out, trained, classifier, tmp_path):
    texts = TEXTS + ["   ", ""] if fmt != "txt" else TEXTS + ["   "]
    output = tmp_path / f"preds.{out}"
    predict_cli(
        trained,
        "--data.predict_file",
        str(write_texts(tmp_path, fmt, texts)),
        "--prediction.output",
        str(output),
        "--data.eval_batch_size",
        "4",
    )
    rows = read_output(output)
    expected = classifier.predict(texts)
    assert [r["text"] for r in rows] == texts
    assert [str(r["id"]) for r in rows] == [str(i) for i in range(len(texts))]
    assert [r["label"] or None for r in rows] == [p.label for p in expected]
    assert expected[-1].label is None and expected[0].label in classifier.class_names
    first = rows[0]
    probs = first["probs"] if out == "jsonl" else {n: float(first[f"prob_{n}"]) for n in classifier.class_names}
    assert sum(probs.values()) == pytest.approx(1, abs=1e-4)
    assert float(first["score"]) == pytest.approx(max(probs.values()), abs=1e-6)
    assert float(first["score"]) == pytest.approx(expected[0].score, abs=1e-4)


def test_predict_without_file_uses_the_test_split(trained, tmp_path):
    output = tmp_path / "preds.csv"
    predict_cli(trained, "--prediction.output", str(output), precision=None)  # auto, as test below
    rows = read_output(output)
    assert [int(r["id"]) for r in rows] == list(range(80))
    accuracy = sum(r["label"] == r["true_label"] for r in rows) / len(rows)
    tested = cli_main(
        [
            "test",
            "--ckpt_path",
            str(trained.checkpoint),
            "--data.cache_dir",
            str(trained.cache),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert accuracy == pytest.approx(float(tested.trainer.callback_metrics["test_acc"]), abs=1e-6)


def test_predict_reports_blank_and_truncates_long_texts(trained, tmp_path, caplog):
    output = tmp_path / "preds.jsonl"
    path = write_texts(tmp_path, "txt", ["market " * 2000, "", "goal team"])
    predict_cli(trained, "--data.predict_file", str(path), "--prediction.output", str(output))
    err = caplog.text
    assert "1 of 3 texts" in err and "(ids 1)" in err and "1 texts reached max_length=32" in err
    assert [r["label"] is None for r in read_output(output)] == [False, True, False]


def expect_error(capsys, match, *call):
    with pytest.raises(SystemExit) as exit_:
        call[0](*call[1:])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "agnews: error:" in err and match in err and "Traceback" not in err
    return err


def test_predict_refuses_bad_outputs(trained, tmp_path, capsys):
    path = write_texts(tmp_path, "txt", TEXTS)
    base = ("--data.predict_file", str(path), "--prediction.output")
    expect_error(capsys, "folder", predict_cli, trained, *base, str(tmp_path / "missing" / "p.csv"))
    expect_error(capsys, "use a .csv or .jsonl", predict_cli, trained, *base, str(tmp_path / "p.xlsx"))
    expect_error(capsys, "--prediction.output FILE", predict_cli, trained, "--data.predict_file", str(path))
    existing = tmp_path / "p.csv"
    existing.write_text("keep me")
    expect_error(capsys, "--prediction.overwrite true", predict_cli, trained, *base, str(existing))
    assert existing.read_text() == "keep me"
    predict_cli(trained, *base, str(existing), "--prediction.overwrite", "true")
    assert len(read_output(existing)) == len(TEXTS)


def test_predict_refuses_bad_input_files(trained, tmp_path, capsys):
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    out = ("--prediction.output", str(tmp_path / "p.csv"))
    expect_error(
        capsys,
        "line 1 is not valid UTF-8",
        predict_cli,
        trained,
        "--data.predict_file",
        str(tmp_path / "latin.txt"),
        *out,
    )
    (tmp_path / "blank.txt").write_text("\n \n")
    expect_error(capsys, "every text", predict_cli, trained, "--data.predict_file", str(tmp_path / "blank.txt"), *out)
    (tmp_path / "t.csv").write_text("title\nhello\n")
    expect_error(capsys, "no 'text' column", predict_cli, trained, "--data.predict_file", str(tmp_path / "t.csv"), *out)
    assert not (tmp_path / "p.csv").exists()


def test_api_predictions_do_not_depend_on_batching(classifier):
    together = classifier.predict_proba(TEXTS)
    alone = torch.cat([classifier.predict_proba([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    predictions = classifier.predict(TEXTS)
    assert [p.label for p in predictions] == [classifier.class_names[i] for i in together.argmax(-1)]
    assert set(predictions[0].probs) == set(classifier.class_names) == {"World", "Sports", "Business", "Sci/Tech"}


def test_api_on_a_hugging_face_model_runs_its_last_layer_at_the_first_token(classifier):
    # the Hugging Face model inside the fitted module (tiny BERT, first-token head), given to the Classifier as is
    expected = classifier.predict_proba(TEXTS)
    names, length = classifier.class_names, classifier.max_length
    model = Classifier(classifier.model.model, classifier.tokenizer, names, max_length=length, precision="32")
    assert classifier.fast is classifier.model.fast and model.fast is not classifier.fast  # the module's own
    torch.testing.assert_close(model.predict_proba(TEXTS), expected, atol=1e-5, rtol=1e-4)
    model.fast.first_token = None  # the whole last layer: the same probabilities
    torch.testing.assert_close(model.predict_proba(TEXTS), expected, atol=1e-5, rtol=1e-4)
    assert "forward" not in vars(classifier.model.fast.first_token.layer)


def test_api_best_last_and_errors(trained):
    last = Classifier.from_checkpoint("last", log_root=trained.log_root)
    assert last.checkpoint.name == "last.ckpt" and last.max_length == 32
    with pytest.raises(AGNewsError, match="must be strings"):
        last.predict(["ok", None])
    with pytest.raises(AGNewsError, match="precision 'fp16'"):
        Classifier.from_checkpoint(trained.checkpoint, precision="fp16")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_fast_inference_variants_agree_with_fp32(precision, trained, classifier):
    if precision == "bf16" and not cpu_bf16()[0]:
        pytest.skip("this CPU has no native bf16")
    fast = Classifier.from_checkpoint(trained.checkpoint, precision=precision)
    if precision == "int8":
        assert isinstance(fast.model.model.classifier, torch.ao.nn.quantized.dynamic.Linear)
    texts = make_rows(20, seed=3)[0]
    agree = (fast.predict_proba(texts).argmax(-1) == classifier.predict_proba(texts).argmax(-1)).float().mean()
    assert agree >= 0.9


def test_predict_cli_int8_and_bf16_options(trained, tmp_path, capsys):
    path = write_texts(tmp_path, "txt", TEXTS)
    cli = predict_cli(
        trained,
        "--data.predict_file",
        str(path),
        "--prediction.output",
        str(tmp_path / "a.csv"),
        "--prediction.int8",
        "true",
        precision=None,
    )
    assert isinstance(cli.model.model.classifier, torch.ao.nn.quantized.dynamic.Linear)
    assert str(cli.trainer.precision) == "32-true"  # int8 takes fp32 inputs: auto resolves to fp32
    expect_error(
        capsys,
        "choose one fast path",
        predict_cli,
        trained,
        "--data.predict_file",
        str(path),
        "--prediction.output",
        str(tmp_path / "b.csv"),
        "--prediction.int8",
        "true",
        "--trainer.precision",
        "bf16-mixed",
    )


def test_truncated_checkpoint_is_refused(trained, tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(trained.checkpoint.read_bytes()[:5000])
    with pytest.raises(AGNewsError, match="damaged or truncated"):
        Classifier.from_checkpoint(broken)
    expect_error(
        capsys,
        "damaged or truncated",
        predict_cli,
        trained,
        "--ckpt_path",
        str(broken),
        "--prediction.output",
        str(tmp_path / "p.csv"),
    )


@pytest.mark.parametrize("native", [True, False])
def test_api_precision_is_auto_by_default(native, trained, monkeypatch):
    monkeypatch.setattr(
        "agnews.precision.cpu_bf16", lambda: (native, "amx_bf16" if native else "no avx512_bf16/amx_bf16")
    )
    classifier = Classifier.from_checkpoint(trained.checkpoint)
    assert classifier.precision == ("bf16" if native else "32")
    # and its batches are the size measured fastest for that precision (fp32 32 rows, bf16 64)
    assert classifier.batch_size == (64 if native else 32)


@pytest.mark.parametrize("precision,expected", [("32", 32), ("int8", 32), ("bf16", 64)])
def test_api_batch_size_follows_precision_unless_given(precision, expected, trained):
    assert Classifier.from_checkpoint(trained.checkpoint, precision=precision).batch_size == expected
    assert Classifier.from_checkpoint(trained.checkpoint, precision=precision, batch_size=3).batch_size == 3


def test_api_small_batches_give_the_same_predictions_in_input_order(classifier, trained):
    texts = make_rows(70, seed=5)[0] + TEXTS  # more rows than one default batch
    small = Classifier.from_checkpoint(trained.checkpoint, precision="32", batch_size=4)
    torch.testing.assert_close(small.predict_proba(texts), classifier.predict_proba(texts), atol=1e-5, rtol=1e-4)


def test_a_model_passed_in_is_left_as_it_was(trained):
    from agnews.internals import attention_of
    from agnews.modeling.module import AGNewsClassifier

    module = AGNewsClassifier.load_from_checkpoint(trained.checkpoint, map_location="cpu", weights_only=True)
    module.model.set_attn_implementation("eager")
    module.train()
    expected = Classifier(module, module.tokenizer, module.label_names, precision="32").predict_proba(TEXTS)
    assert module.training and attention_of(module.model) == "eager"  # its mode and kernel, back after the call
    int8 = Classifier(module, module.tokenizer, module.label_names, precision="int8")
    quantized = int8.predict_proba(TEXTS)
    assert isinstance(int8.model.model.classifier, torch.ao.nn.quantized.dynamic.Linear)
    assert type(module.model.classifier) is torch.nn.Linear  # quantized a copy, not the caller's model
    # int8 rounds the weights: every probability moves a little (0.02-0.03 here), so a row whose two likeliest
    # classes are close in fp32 may swap them, a confident one must not. How many rows are confident depends on
    # how the tiny model trained (fp32 on a CPU without native bf16: 8-9 of the 18, bf16 elsewhere: more)
    assert (quantized - expected).abs().max() < 0.1, (quantized, expected)
    top2 = expected.topk(2, dim=-1).values
    confident = top2[:, 0] - top2[:, 1] > 0.1
    assert confident.sum() >= 4, expected
    assert (quantized.argmax(-1) == expected.argmax(-1))[confident].all(), (quantized, expected)
