from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from agnews.data.datamodule import AGNewsDataModule
from agnews.data.loading import AG_NEWS_CLASSES
from agnews.data.splits import stratified_split
from agnews.errors import AGNewsError
from tests.conftest import make_rows, write_split


def make_dm(data_dir, tokenizer, tmp_path, **kwargs) -> AGNewsDataModule:
    kwargs.setdefault("max_length", 32)
    kwargs.setdefault("val_size", 0.25)
    kwargs.setdefault("batch_size", 8)
    return AGNewsDataModule(
        dataset=str(data_dir), tokenizer=str(tokenizer), cache_dir=str(tmp_path / "cache"), **kwargs
    )


def cache_files(tmp_path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt")}


def test_cache_written_then_reused(data_dir, tiny_bert, tmp_path):
    make_dm(data_dir, tiny_bert, tmp_path).prepare_data()
    first = cache_files(tmp_path)
    assert sorted(name.split("-")[0] for name in first) == ["test", "train"]
    make_dm(data_dir, tiny_bert, tmp_path).prepare_data()
    assert cache_files(tmp_path) == first  # same files, not rewritten


def test_split_options_reuse_the_cache(data_dir, tiny_bert, tmp_path):
    make_dm(data_dir, tiny_bert, tmp_path).prepare_data()
    first = cache_files(tmp_path)
    dm = make_dm(data_dir, tiny_bert, tmp_path, val_size=10, train_size=50, seed=3, batch_size=4)
    dm.prepare_data()
    assert cache_files(tmp_path) == first  # they do not change the tensors, only which rows are used


@pytest.mark.parametrize("change", ["max_length", "tokenizer", "data"])
def test_cache_invalidated_by_each_setting(change, data_dir, tiny_bert, tiny_distilbert, tmp_path):
    make_dm(data_dir, tiny_bert, tmp_path).prepare_data()
    first = cache_files(tmp_path)
    tokenizer, kwargs = tiny_bert, {}
    if change == "max_length":
        kwargs["max_length"] = 16
    elif change == "tokenizer":
        tokenizer = tiny_distilbert
    else:
        texts, labels = make_rows(40, seed=0)
        write_split(data_dir, "train", [texts[0] + " today", *texts[1:]], labels)
    make_dm(data_dir, tokenizer, tmp_path, **kwargs).prepare_data()
    now = cache_files(tmp_path)
    new = set(now) - set(first)
    assert new, "a changed setting must never reuse a cached file"
    assert all(now[name] == stamp for name, stamp in first.items())


def test_interrupted_write_leaves_no_file(data_dir, tiny_bert, tmp_path, monkeypatch):
    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        make_dm(data_dir, tiny_bert, tmp_path).prepare_data()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_setup_loads_cache_and_splits_stratified(data_dir, tiny_bert, tmp_path):
    dm = make_dm(data_dir, tiny_bert, tmp_path, val_size=40)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == AG_NEWS_CLASSES
    val_labels = [int(dm.val_set[i][1]) for i in range(len(dm.val_set))]
    assert Counter(val_labels) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert len(dm.train_set) == 120
    assert not set(dm.val_set.rows.tolist()) & set(dm.train_set.rows.tolist())
    rows = dm.val_set.rows.tolist()
    dm.setup("fit")  # a second call keeps the state it has
    assert dm.val_set.rows.tolist() == rows


def test_split_is_seeded(data_dir, tiny_bert, tmp_path):
    def val_rows(seed):
        dm = make_dm(data_dir, tiny_bert, tmp_path, seed=seed)
        dm.prepare_data()
        dm.setup("fit")
        return dm.val_set.rows.tolist()

    assert val_rows(1) == val_rows(1)
    assert val_rows(1) != val_rows(2)


def test_a_train_size_beyond_the_data_takes_every_row(data_dir, tiny_bert, tmp_path, caplog):
    # the hub default's budget (6,000 rows) on a copy that holds fewer
    dm = make_dm(data_dir, tiny_bert, tmp_path, val_size=32, train_size=6000)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 128 and "train_size=6,000 is more than the 128 rows left: all taken" in caplog.text


def test_train_size_subset_is_stratified(data_dir, tiny_bert, tmp_path):
    dm = make_dm(data_dir, tiny_bert, tmp_path, val_size=0.25, train_size=0.5)
    dm.prepare_data()
    dm.setup("fit")
    labels = [int(dm.train_set[i][1]) for i in range(len(dm.train_set))]
    assert Counter(labels) == {0: 15, 1: 15, 2: 15, 3: 15}


def test_stratified_split_keeps_proportions_with_rounding_and_is_seeded():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    taken, rest = stratified_split(labels, 15, 0, "val_size")
    assert len(taken) == 15 and len(rest) == 85 and sorted([*taken, *rest]) == list(range(100))
    counts = Counter(labels[taken].tolist())
    assert counts[0] in (10, 11) and counts[1] == 3 and counts[2] in (1, 2)
    assert (stratified_split(labels, 15, 0, "val_size")[0] == taken).all()
    assert (stratified_split(labels, 15, 1, "val_size")[0] != taken).any()
    with pytest.raises(AGNewsError, match="val_size"):
        stratified_split(labels, 100, 0, "val_size")


def test_a_split_that_cannot_hold_every_class_is_a_clear_error():
    labels = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has one row: it cannot be on both sides
    with pytest.raises(AGNewsError, match=r"val_size=4 cannot split 41 rows of 3 classes .*give each class more rows"):
        stratified_split(labels, 4, 0, "val_size")


def test_batches_are_padded_to_their_own_longest_row(data_dir, tiny_bert, tmp_path):
    dm = make_dm(data_dir, tiny_bert, tmp_path, max_length=64)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max()) < 64
    assert lengths.min() < lengths.max()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == dm.pad_token_id).all()
    assert batch["labels"].dtype == torch.long


@pytest.mark.parametrize(
    ("precision", "given", "expected"), [("32-true", None, 32), ("bf16-mixed", None, 64), ("32-true", 7, 7)]
)
def test_evaluation_batches_are_sized_for_the_runs_precision(precision, given, expected, data_dir, tiny_bert, tmp_path):
    import lightning as L

    dm = make_dm(data_dir, tiny_bert, tmp_path, val_size=40, eval_batch_size=given)
    dm.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        sizes = [len(batch["labels"]) for batch in loader]
        assert sizes[0] == min(expected, len(loader.dataset)) and sum(sizes) == len(loader.dataset)


@pytest.mark.parametrize(
    ("precision", "given", "multiple"),
    [("32-true", None, 1), ("bf16-mixed", None, 8), ("bf16-true", None, 8), ("bf16-mixed", 1, 1), ("32-true", 16, 16)],
)
def test_batches_are_padded_to_a_multiple_for_the_runs_precision(
    precision, given, multiple, data_dir, tiny_bert, tmp_path
):
    import lightning as L

    dm = make_dm(data_dir, tiny_bert, tmp_path, val_size=40, pad_to_multiple_of=given)
    dm.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    dm.prepare_data()
    dm.setup("fit")
    lengths = set()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            width, longest = batch["input_ids"].shape[1], int(batch["attention_mask"].sum(1).max())
            assert width % multiple == 0 and longest <= width < longest + multiple
            assert (batch["input_ids"][batch["attention_mask"] == 0] == dm.pad_token_id).all()
            lengths.add(width)
    assert multiple == 1 or len(lengths) < len({int(n) for n in dm.train_set.lengths})


def test_a_pad_multiple_below_one_is_a_one_line_error(data_dir, tiny_bert, tmp_path):
    with pytest.raises(AGNewsError, match="pad_to_multiple_of=0: use 1 or more"):
        make_dm(data_dir, tiny_bert, tmp_path, pad_to_multiple_of=0)


def test_classic_headerless_csv(tmp_path, tiny_bert):
    folder = tmp_path / "ag_news_csv"
    folder.mkdir()
    rows = ['"3","Fears for pension","Unions said today"', '"4","Space race","NASA chip report"'] * 8
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    (folder / "test.csv").write_text("\n".join(rows) + "\n")
    dm = make_dm(folder, tiny_bert, tmp_path, val_size=4)
    dm.prepare_data()
    dm.setup("test")
    assert dm.class_names == AG_NEWS_CLASSES
    assert sorted(set(dm.test_set.labels.tolist())) == [2, 3]
    from agnews.data.loading import load_raw

    raw, _ = load_raw(str(folder))
    assert raw["train"][0] == {"text": "Fears for pension Unions said today", "label": 2}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_hub_schema_in_csv_and_jsonl(fmt, tmp_path, tiny_bert):
    folder = tmp_path / "d"
    write_split(folder, "train", *make_rows(10, seed=0), fmt=fmt)
    write_split(folder, "test", *make_rows(5, seed=1), fmt=fmt)
    dm = make_dm(folder, tiny_bert, tmp_path, val_size=8)
    dm.prepare_data()
    dm.setup(None)
    assert len(dm.train_set) == 32 and len(dm.test_set) == 20


def test_class_names_come_from_the_data(tmp_path, tiny_bert):
    import datasets

    folder = tmp_path / "named"
    folder.mkdir()
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b", "c", "d"])}
    )
    for split, seed in (("train", 0), ("test", 1)):
        texts, labels = make_rows(5, seed)
        datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features).to_parquet(
            folder / f"{split}.parquet"
        )
    dm = make_dm(folder, tiny_bert, tmp_path, val_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == ["a", "b", "c", "d"]


# ---- bad input: one clear error, nothing half-written ----


def assert_error(dm, match, tmp_path):
    with pytest.raises(AGNewsError, match=match):
        dm.prepare_data()
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_missing_text_column(tmp_path, tiny_bert):
    folder = tmp_path / "d"
    folder.mkdir()
    pd.DataFrame({"body": ["a b"] * 8, "label": [0, 1] * 4}).to_parquet(folder / "train.parquet")
    pd.DataFrame({"body": ["a b"] * 8, "label": [0, 1] * 4}).to_parquet(folder / "test.parquet")
    assert_error(make_dm(folder, tiny_bert, tmp_path), "no text column", tmp_path)


@pytest.mark.parametrize("bad", [4, -1, None])  # None: a missing label in a nullable column
def test_labels_outside_class_range(bad, tmp_path, tiny_bert):
    folder = tmp_path / "d"
    texts, labels = make_rows(5, seed=0)
    write_split(folder, "train", texts, [bad, *labels[1:]])
    write_split(folder, "test", texts, labels)
    assert_error(make_dm(folder, tiny_bert, tmp_path), rf"label {bad}.*0\.\.3", tmp_path)


def test_folder_without_train_split(tmp_path, tiny_bert):
    folder = tmp_path / "d"
    write_split(folder, "test", *make_rows(5, seed=0))
    dm = make_dm(folder, tiny_bert, tmp_path)
    with pytest.raises(AGNewsError, match="no 'train' split"):
        dm.prepare_data()


def test_folder_without_data_files(tmp_path, tiny_bert):
    (tmp_path / "empty").mkdir()
    assert_error(make_dm(tmp_path / "empty", tiny_bert, tmp_path), "no parquet/CSV/JSONL", tmp_path)


def test_missing_dataset_folder(tmp_path, tiny_bert):
    assert_error(make_dm(tmp_path / "nope", tiny_bert, tmp_path), "does not exist", tmp_path)


def test_unreachable_hub_dataset(tmp_path, tiny_bert):
    dm = AGNewsDataModule(
        dataset="fancyzhx/ag_news", tokenizer=str(tiny_bert), max_length=32, cache_dir=str(tmp_path / "cache")
    )
    assert_error(dm, "HF_HUB_OFFLINE is set and no copy is cached; pass a local folder", tmp_path)


def test_max_length_beyond_model_limit(data_dir, tiny_bert, tmp_path):
    assert_error(make_dm(data_dir, tiny_bert, tmp_path, max_length=512), r"exceeds .* \(64\)", tmp_path)


def test_text_labels_become_classes_in_sorted_order_with_one_mapping_for_every_split(tmp_path, tiny_bert):
    folder = tmp_path / "text-labels"
    texts, _ = make_rows(6, seed=0)
    names = ["sport", "tech", "world"]
    write_split(folder, "train", texts[:18], [names[i % 3] for i in range(18)], fmt="csv")
    write_split(folder, "test", texts[:4], ["world", "tech", "world", "tech"], fmt="csv")  # no "sport" here
    dm = make_dm(folder, tiny_bert, tmp_path, val_size=3)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.class_names == names
    test_labels = [int(dm.test_set[i][1]) for i in range(4)]
    assert test_labels == [2, 1, 2, 1]


def test_integer_labels_name_as_many_classes_as_the_head_has(tmp_path, tiny_bert):
    folder = tmp_path / "six"
    texts, _ = make_rows(6, seed=0)
    write_split(folder, "train", texts, [i % 6 for i in range(len(texts))])
    write_split(folder, "test", texts[:6], list(range(6)))
    dm = make_dm(folder, tiny_bert, tmp_path, val_size=6, num_classes=6)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == ["0", "1", "2", "3", "4", "5"]
    # the same rows for a 4-class head: label 4 is out of range, said in one line, nothing cached
    assert_error(make_dm(folder, tiny_bert, tmp_path / "four"), r"label 4.*0\.\.3", tmp_path / "four")
