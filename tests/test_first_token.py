import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification, RobertaConfig, XLMRobertaConfig

from agnews.modeling.first_token import LAYERS, FirstTokenLayer
from agnews.modeling.module import AGNewsClassifier
from tests.test_frozen_outputs import padded_batch

ENCODERS = ["tiny_distilbert", "tiny_bert", "tiny_mpnet"]


def forward_both(model: AGNewsClassifier, ids, mask):
    """Logits and trained weights' gradients with the last layer at the first token (the product) and whole."""
    results = []
    for first_token in (model.fast.first_token, None):
        model.fast.first_token = first_token
        model.zero_grad()
        logits = model(ids, mask)
        logits.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads))
    return results


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("attention", [None, "eager"])  # None: SDPA where the encoder has it
def test_first_token_layer_gives_the_full_forward_and_backward(encoder, attention, request):
    model = AGNewsClassifier(backbone=str(request.getfixturevalue(encoder)), attention=attention)
    assert model.fast.first_token is not None  # the default head (pooling cls) of every bundled architecture
    ids, mask = padded_batch(model.model.config.vocab_size)
    (logits, grads), (full_logits, full_grads) = forward_both(model, ids, mask)
    assert torch.allclose(logits, full_logits, atol=1e-6)
    assert grads.keys() == full_grads.keys() and len(grads) > 4
    for name, grad in grads.items():
        assert torch.allclose(grad, full_grads[name], atol=1e-6), name
    # the last layer's own weights get their gradients through the first token alone
    last = [n for n in grads if ".layer.3." in n]
    assert last and all(grads[n].abs().sum() > 0 for n in last)

    model.eval()
    with torch.inference_mode():
        evaluated = model(ids, mask)
        model.fast.first_token = None
        assert torch.allclose(evaluated, model(ids, mask), atol=1e-6)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_first_token_layer_only_for_first_token_heads(encoder, request):
    model = AGNewsClassifier(backbone=str(request.getfixturevalue(encoder)), pooling="mean")
    assert model.fast.first_token is None  # a mean-pooled head reads every row of the last layer
    layer = AGNewsClassifier(backbone=str(request.getfixturevalue(encoder))).fast.first_token.layer
    assert "forward" not in vars(layer)  # outside a forward pass the layer is its stock self


@pytest.mark.parametrize("config", [RobertaConfig, XLMRobertaConfig])
def test_roberta_family_first_token_layer(config):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        config(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=4,
        )
    )
    assert model.config.model_type in LAYERS
    first_token = FirstTokenLayer.for_model(model)
    ids, mask = padded_batch(50)
    full = model(input_ids=ids, attention_mask=mask).logits
    with first_token.around():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, full, atol=1e-6)


def test_first_token_layer_trains_and_evaluates_with_dropout(tiny_distilbert):
    # dropout draws masks for the first token's row alone: not the same draws, the same model in eval mode
    model = AGNewsClassifier(backbone=str(tiny_distilbert), dropout=0.3)
    ids, mask = padded_batch(model.model.config.vocab_size)
    model(ids, mask).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    copy_ = copy.deepcopy(model)  # the layer it drives is the copy's own
    assert copy_.fast.first_token.layer is copy_.model.distilbert.transformer.layer[-1]
    copy_.fast.first_token = None
    assert torch.allclose(model(ids, mask), copy_(ids, mask), atol=1e-6)
