"""The last encoder layer at the first token only, for classifiers that read nothing else.

A first-token classifier (`pooling="cls"`: BERT's pooler, DistilBERT's, RoBERTa's and MPNet's heads all read
position 0 of the last hidden states) uses one row of the last layer's output. That row needs the keys and
values of every token, but its query, attention output, feed-forward and layer norms at position 0 alone: the
rest of the layer, five sixths of its matrix products, is computed and thrown away. Within `around()`, the last
layer computes that one row with its own weights and submodules and returns hidden states of length 1, which
the head reads as before. Same arithmetic, so the same logits and gradients (up to float rounding); dropout,
where it is on, is drawn for that row alone, which its distribution does not see.

Each architecture's layer is driven through its own submodules, so this knows their structure: BERT (MiniLM),
RoBERTa and XLM-R, DistilBERT, MPNet. Other encoders run their whole last layer. tests/test_first_token.py
compares every one against its stock forward pass, so a transformers upgrade that changes a layer shows there.
"""

import math
import types
from contextlib import contextmanager

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward as bert_eager_attention
from transformers.models.distilbert.modeling_distilbert import eager_attention_forward as distilbert_eager_attention

from agnews.internals import attention_of
from agnews.modeling.backbone import layer_list


def _first_query(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An attention mask (or bias) for the first query only: a per-query mask [batch, heads, queries, keys] keeps
    its first row; one broadcast over the queries ([batch, 1, 1, keys]) serves as it is."""
    if mask is not None and mask.dim() == 4 and mask.shape[-2] > 1:
        return mask[:, :, :1]
    return mask


def _attend(attention: nn.Module, eager, query, key, value, mask) -> torch.Tensor:
    """transformers' own attention function for the model's kernel (eager, SDPA), on [batch, heads, length, d]
    inputs; returns [batch, query length, heads * d]."""
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention_of(attention), eager)
    dropout = attention.dropout.p if attention.training else 0.0
    out, _ = attend(attention, query, key, value, _first_query(mask), dropout=dropout, scaling=attention.scaling)
    return out.reshape(query.shape[0], query.shape[2], -1).contiguous()


def _heads(linear: nn.Module, states: torch.Tensor, head_size: int) -> torch.Tensor:
    return linear(states).view(*states.shape[:2], -1, head_size).transpose(1, 2)


def bert_layer(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """`BertLayer` (also RoBERTa's and XLM-R's): self-attention, its output block, the feed-forward block."""
    attention = layer.attention.self
    first = hidden_states[:, :1]
    size = attention.attention_head_size
    query = _heads(attention.query, first, size)
    key, value = _heads(attention.key, hidden_states, size), _heads(attention.value, hidden_states, size)
    context = _attend(attention, bert_eager_attention, query, key, value, attention_mask)
    return layer.feed_forward_chunk(layer.attention.output(context, first))


def distilbert_layer(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """DistilBERT's `TransformerBlock`: attention, residual and layer norm, feed-forward, residual and layer norm."""
    attention = layer.attention
    first = hidden_states[:, :1]
    size = attention.attention_head_size
    query = _heads(attention.q_lin, first, size)
    key, value = _heads(attention.k_lin, hidden_states, size), _heads(attention.v_lin, hidden_states, size)
    context = _attend(attention, distilbert_eager_attention, query, key, value, attention_mask)
    attended = layer.sa_layer_norm(attention.out_lin(context) + first)
    return layer.output_layer_norm(layer.ffn(attended) + attended)


def mpnet_layer(layer, hidden_states, attention_mask=None, position_bias=None, *args, **kwargs):
    """`MPNetLayer`: its own eager attention with a relative position bias (as MPNet's, on the first query)."""
    attention = layer.attention.attn
    first = hidden_states[:, :1]
    size = attention.attention_head_size
    query = _heads(attention.q, first, size)
    key, value = _heads(attention.k, hidden_states, size), _heads(attention.v, hidden_states, size)
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size)
    for bias in (_first_query(position_bias), _first_query(attention_mask)):
        if bias is not None:
            scores = scores + bias
    probs = attention.dropout(nn.functional.softmax(scores, dim=-1))
    context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(first.shape[0], 1, -1)
    attended = layer.attention.LayerNorm(layer.attention.dropout(attention.o(context)) + first)
    return (layer.output(layer.intermediate(attended), attended),)


# the stock model types whose first-token classifier head reads position 0 of the last hidden states
LAYERS = {
    "bert": bert_layer,
    "roberta": bert_layer,
    "xlm-roberta": bert_layer,
    "distilbert": distilbert_layer,
    "mpnet": mpnet_layer,
}


class FirstTokenLayer:
    """Runs `model`'s last encoder layer at the first token only, within `around()`."""

    def __init__(self, layer: nn.Module, forward):
        self.layer = layer
        self.forward = types.MethodType(forward, layer)

    @classmethod
    def for_model(cls, model: nn.Module) -> "FirstTokenLayer | None":
        """For transformers' own sequence classifier of a known architecture (its head reads the first token);
        None for any other model, such as agnews' mean-pooled classifiers (agnews.modeling.pooling)."""
        stock = type(model).__module__.startswith("transformers.models.")
        forward = LAYERS.get(model.config.model_type)
        found = layer_list(model.base_model)
        if not (stock and type(model).__name__.endswith("ForSequenceClassification")) or not forward or not found:
            return None
        return cls(found[1][-1], forward)

    @contextmanager
    def around(self):
        self.layer.forward = self.forward
        try:
            yield
        finally:
            del self.layer.forward
