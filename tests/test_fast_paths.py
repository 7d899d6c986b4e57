"""The fast paths' one entry point. Each path is compared with the plain model where it lives: the first-token
layer per architecture in test_first_token.py, the kept frozen outputs step for step in test_frozen_outputs.py,
the attention kernels in test_model.py; here, the switches and what `FastPaths` leaves behind."""

import pytest
import torch

from agnews.internals import attention_of
from agnews.modeling.fast_paths import FastPaths
from agnews.modeling.module import AGNewsClassifier
from agnews.train import cli_main
from tests.conftest import fit_args
from tests.test_frozen_outputs import padded_batch


def test_first_token_only_off_gives_the_same_logits_and_gradients_on_the_default_model(tiny_distilbert):
    fast = AGNewsClassifier(backbone=str(tiny_distilbert))
    plain = AGNewsClassifier(backbone=str(tiny_distilbert), first_token_only=False)
    plain.load_state_dict(fast.state_dict())
    assert fast.fast.first_token is not None and plain.fast.first_token is None
    ids, mask = padded_batch(fast.model.config.vocab_size)
    results = []
    for model in (fast, plain):
        logits = model(ids, mask, "train")
        logits.pow(2).sum().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (logits, grads), (plain_logits, plain_grads) = results
    torch.testing.assert_close(logits, plain_logits, atol=1e-6, rtol=1e-5)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_around_rewrites_the_model_only_within_a_forward_pass(tiny_distilbert):
    model = AGNewsClassifier(backbone=str(tiny_distilbert))
    layer = model.fast.first_token.layer
    ids, mask = padded_batch(model.model.config.vocab_size)
    with model.fast.around("train", ids, mask):
        assert "forward" in vars(layer)
    assert "forward" not in vars(layer)
    with pytest.raises(RuntimeError), model.fast.around("val", ids, mask):
        raise RuntimeError("a failed forward pass")
    assert "forward" not in vars(layer)  # put back on the way out of an error too


def test_evaluating_gives_the_callers_mode_and_kernel_back(tiny_bert):
    model = AGNewsClassifier(backbone=str(tiny_bert), attention="eager").model.train()
    fast = FastPaths(model)
    with fast.evaluating():
        assert not model.training and attention_of(model) == fast.evaluation_attention
    assert model.training and attention_of(model) == "eager"


def test_first_token_only_is_a_cli_switch_kept_by_the_checkpoint(tiny_bert, data_dir, tmp_path):
    cli = cli_main(["fit", *fit_args(tiny_bert, data_dir, tmp_path, "--model.first_token_only", "false")])
    assert cli.model.fast.first_token is None
    best = AGNewsClassifier.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert best.hparams.first_token_only is False and best.fast.first_token is None
