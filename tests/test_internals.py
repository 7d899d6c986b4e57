"""The private library names agnews.internals relies on: if an upgrade changes one, this fails first."""

import inspect

import datasets
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification

from agnews.internals import attention_of, can_switch_attention, dataset_fingerprint, version_of


def test_attention_is_read_and_switched(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    assert attention_of(model) == "sdpa" and can_switch_attention(model)
    model.set_attn_implementation("eager")
    assert attention_of(model) == "eager"


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
