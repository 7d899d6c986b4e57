"""The private library names agnews.internals relies on: if an upgrade changes one, this fails first."""

import inspect
import logging
import re

import datasets
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification

from agnews.internals import attention_of, can_switch_attention, dataset_fingerprint, no_lightning_tips, version_of
from tests.conftest import ROOT


def test_attention_is_read_and_switched(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    assert attention_of(model) == "sdpa" and can_switch_attention(model)
    model.set_attn_implementation("eager")
    assert attention_of(model) == "eager"


def test_lightning_tips_are_dropped_inside_and_only_inside():
    import lightning as L

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning 2.6 logs its start-up lines
    log.addHandler(handler)
    try:
        options = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        with no_lightning_tips():
            L.Trainer(**options)
        inside, seen[:] = list(seen), []
        L.Trainer(**options)
    finally:
        log.removeHandler(handler)
    assert [m for m in seen if m.startswith("💡 Tip:")], seen  # Lightning still prints it: the filter still has work
    assert not [m for m in inside if "Tip" in m], inside
    assert [m for m in inside if m.startswith("GPU available")], inside  # Lightning's other lines still show


def test_mpnet_cannot_switch_attention(tiny_mpnet):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_mpnet, num_labels=4)
    assert not can_switch_attention(model)


def test_version_moves_with_every_in_place_change():
    weight = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    before = version_of(weight)
    weight.mul(2.0)  # a new tensor: the weight is unchanged
    assert version_of(weight) == before
    with torch.no_grad():
        weight.copy_(torch.zeros(3))  # what load_state_dict does
    assert version_of(weight) > before


def test_dataset_fingerprint_follows_the_content():
    a = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})
    b = datasets.Dataset.from_dict({"text": ["x", "z"], "label": [0, 1]})
    assert isinstance(dataset_fingerprint(a), str) and dataset_fingerprint(a) != dataset_fingerprint(b)


@pytest.mark.parametrize(
    "name, parameters",
    [
        ("_save_checkpoint", ["self", "trainer", "filepath"]),
        ("_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]),
        ("_monitor_candidates", ["self", "trainer"]),
        ("_should_skip_saving_checkpoint", ["self", "trainer"]),
        ("_should_save_on_train_epoch_end", ["self", "trainer"]),
    ],
)
def test_model_checkpoint_steps_are_as_written_against(name, parameters):
    assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters) == parameters


def test_lightning_cli_runs_subcommands_as_written_against():
    from lightning.pytorch.cli import LightningCLI

    assert list(inspect.signature(LightningCLI._run_subcommand).parameters) == ["self", "subcommand"]
    # agnews.internals.CLIHooks leaves this step out: it must still be the one that reads `--ckpt_path`
    assert "ckpt_path" in inspect.getsource(LightningCLI._parse_ckpt_path)


def test_training_length_and_the_epoch_position_are_the_loops_own(tiny_bert, data_dir, tmp_path):
    import lightning as L

    from agnews.internals import batches_done_this_epoch, set_training_length
    from tests.test_model import tiny_datamodule

    seen = []

    class Shorten(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(batches_done_this_epoch(trainer))
            if trainer.global_step == 2:
                set_training_length(trainer, 5, 3)  # 5 steps in all, validation every 3 batches

    from agnews.modeling.module import AGNewsClassifier

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Shorten()],
        num_sanity_val_steps=0,
    )
    validations = []
    model = AGNewsClassifier(backbone=str(tiny_bert))
    model.on_validation_epoch_start = lambda: validations.append(trainer.global_step)
    trainer.fit(model, datamodule=tiny_datamodule(tiny_bert, data_dir, tmp_path))
    assert trainer.global_step == 5 and seen == [1, 2, 3, 4, 5]
    assert validations == [3]  # the new cadence (the budget asks for the last step's itself)


def test_datasets_offline_reads_the_cache_only():
    import datasets

    from agnews.internals import datasets_offline

    before = datasets.config.HF_HUB_OFFLINE
    with datasets_offline():
        assert datasets.config.HF_HUB_OFFLINE is True
    assert datasets.config.HF_HUB_OFFLINE == before


@pytest.mark.parametrize("n, test_size, seed", [(200, 37, 42), (1087, 100, 7), (41, 12, 0)])
def test_stratified_indices_are_the_rows_train_test_split_draws(n, test_size, seed):
    import numpy as np

    from agnews.internals import stratified_indices

    labels = np.random.default_rng(seed).integers(0, 4, n)
    rows = datasets.Dataset.from_dict(
        {"label": labels, "row": np.arange(n)},
        features=datasets.Features({"label": datasets.ClassLabel(num_classes=4), "row": datasets.Value("int64")}),
    )
    parts = rows.train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)
    train, test = stratified_indices(labels, n - test_size, test_size, seed)
    assert list(train) == parts["train"]["row"][:] and list(test) == parts["test"]["row"][:]


PRIVATE = re.compile(
    r"\b(?:fit_loop|epoch_loop|batch_progress|val_check_batch|_attn_implementation|_fingerprint|_version)\b"
    r"|unittest\.mock|from unittest import mock|\b(?:trainer|model|config|dataset|tensor|param)\._[a-z]\w*"
)


def test_private_library_names_appear_only_in_internals():
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted((ROOT / "agnews").rglob("*.py"))
        if path.name != "internals.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line) and not line.lstrip().startswith("#")
    ]
    assert not offenders, "\n".join(offenders)
