"""Mean-pooled sequence classifiers: transformers' own BERT, DistilBERT, RoBERTa and MPNet classifiers, whose head
reads the mean of the last hidden states over real tokens instead of the first token.

Each is a subclass of the stock `...ForSequenceClassification`: the same parameter names, `save_pretrained` and
`from_pretrained`; only the pooling differs, and no parameter is computed without being used (BERT is built
without its pooler; DistilBERT's `pre_classifier` stays in its head). Each has its own config class and
`model_type`, so a stock loader never mistakes a saved mean-pooled model for a first-token one.

This file imports only torch and transformers: `agnews.export` copies it beside an exported model as
`modeling_agnews.py`, which `transformers.pipeline(..., trust_remote_code=True)` loads without agnews.
"""

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class MeanPooling:
    """`forward` of a mean-pooled classifier; subclasses say how their head takes the pooled vector."""

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        logits = self.head(mean_pool(hidden, attention_mask))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class MeanAtPositionZero(MeanPooling):
    """RoBERTa's, XLM-R's and MPNet's heads read position 0 (dense -> tanh -> out_proj): the mean goes there."""

    def head(self, pooled):
        return self.classifier(pooled.unsqueeze(1))


class MeanPooledBertConfig(BertConfig):
    model_type = "agnews-mean-pooled-bert"


class MeanPooledBertForSequenceClassification(MeanPooling, BertForSequenceClassification):
    config_class = MeanPooledBertConfig
    # pretrained BERT folders carry the pooler this head does not read
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def __init__(self, config):
        super().__init__(config)
        self.bert.pooler = None

    def head(self, pooled):
        return self.classifier(self.dropout(pooled))


class MeanPooledDistilBertConfig(DistilBertConfig):
    model_type = "agnews-mean-pooled-distilbert"


class MeanPooledDistilBertForSequenceClassification(MeanPooling, DistilBertForSequenceClassification):
    config_class = MeanPooledDistilBertConfig

    def head(self, pooled):  # DistilBERT's own head, fed the mean instead of the first token
        return self.classifier(self.dropout(nn.functional.relu(self.pre_classifier(pooled))))


class MeanPooledRobertaConfig(RobertaConfig):
    model_type = "agnews-mean-pooled-roberta"


class MeanPooledRobertaForSequenceClassification(MeanAtPositionZero, RobertaForSequenceClassification):
    config_class = MeanPooledRobertaConfig


class MeanPooledXLMRobertaConfig(XLMRobertaConfig):
    model_type = "agnews-mean-pooled-xlm-roberta"


class MeanPooledXLMRobertaForSequenceClassification(MeanAtPositionZero, XLMRobertaForSequenceClassification):
    config_class = MeanPooledXLMRobertaConfig


class MeanPooledMPNetConfig(MPNetConfig):
    model_type = "agnews-mean-pooled-mpnet"


class MeanPooledMPNetForSequenceClassification(MeanAtPositionZero, MPNetForSequenceClassification):
    config_class = MeanPooledMPNetConfig


# the stock model type each mean-pooled classifier is built from
MEAN_POOLED = {
    cls.config_class.__mro__[1].model_type: cls
    for cls in (
        MeanPooledBertForSequenceClassification,
        MeanPooledDistilBertForSequenceClassification,
        MeanPooledRobertaForSequenceClassification,
        MeanPooledXLMRobertaForSequenceClassification,
        MeanPooledMPNetForSequenceClassification,
    )
}
