"""Property-based: whatever texts and labels a user's files hold, loading and predicting either work or stop
with the project's one-line error (AGNewsError), never with an exception from deep inside torch or datasets."""

import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agnews.data.datamodule import AGNewsDataModule
from agnews.data.texts import read_texts
from agnews.errors import AGNewsError
from agnews.inference import Classifier
from agnews.modeling.module import AGNewsClassifier

unicode_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)), max_size=200
)  # no lone surrogates: not storable
long_text = st.builds(lambda word, n: (word + " ") * n, st.text(min_size=1, max_size=12), st.integers(200, 800))
any_text = st.one_of(unicode_text, st.just(""), st.just("   \t"), long_text)

label_columns = st.one_of(
    st.just(None),  # no label column at all
    st.lists(st.integers(-3, 6), min_size=1),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1),
    st.lists(st.sampled_from(["World", "Sports", "1", "", "Business"]), min_size=1),
)
SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    return AGNewsClassifier(backbone=str(tiny_bert)).eval()


def load(tiny_bert, texts, labels):
    """Write the rows as train and test parquet files, prepare and set up the data: the first training batch."""
    frame = pd.DataFrame({"text": texts})
    if labels is not None:
        frame["label"] = (labels * len(texts))[: len(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        for split in ("train", "test"):
            frame.to_parquet(folder / f"{split}.parquet")
        dm = AGNewsDataModule(
            dataset=str(folder),
            tokenizer=str(tiny_bert),
            max_length=32,
            batch_size=4,
            val_size=0.25,
            cache_dir=str(Path(tmp) / "cache"),
        )
        dm.prepare_data()
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))


def check_batch(batch, model) -> None:
    assert batch["input_ids"].shape[1] <= 32 and batch["labels"].max() < 4 and batch["labels"].min() >= 0
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (len(batch["labels"]), 4) and torch.isfinite(logits).all()


@SETTINGS
@given(texts=st.lists(any_text, min_size=16, max_size=24))  # 16: a quarter for validation holds every class
def test_any_texts_with_valid_labels_load_and_run(tiny_bert, tiny_model, texts):
    check_batch(load(tiny_bert, texts, [0, 1, 2, 3]), tiny_model)


@SETTINGS
@given(texts=st.lists(st.one_of(any_text, st.none()), min_size=1, max_size=24), labels=label_columns)
def test_hostile_label_columns_work_or_fail_clearly(tiny_bert, tiny_model, texts, labels):
    try:
        batch = load(tiny_bert, texts, labels)
    except AGNewsError as err:
        assert "\n" not in str(err)
        event("refused: " + ("label" if "label" in str(err) else "text" if "texts" in str(err) else "split size"))
        return
    event("loaded")
    check_batch(batch, tiny_model)


@pytest.fixture(scope="module")
def classifier(trained):
    return Classifier.from_checkpoint(trained.checkpoint, batch_size=4)


@SETTINGS
@given(texts=st.lists(any_text, max_size=20))
def test_predict_api_on_any_texts(classifier, texts):
    predictions = classifier.predict(texts)
    assert len(predictions) == len(texts)
    for text, p in zip(texts, predictions, strict=False):
        if text.strip():
            assert p.label in classifier.class_names and 0 < p.score <= 1
            assert sum(p.probs.values()) == pytest.approx(1, abs=1e-4)
        else:
            assert p.label is None


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".csv", ".jsonl", ".parquet"]))
def test_reading_any_bytes_as_an_input_file(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(data)
        try:
            texts = read_texts(path)
        except AGNewsError as err:
            assert "\n" not in str(err)
            return
        assert all(isinstance(t, str) for t in texts)
