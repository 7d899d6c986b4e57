"""Applying a trained classifier to new text: read input files, predict fast on a CPU, write predictions.

`Classifier` is the Python API (notebooks, services); the `predict` subcommand's writer (agnews.training.callbacks) uses the
output helpers here.
Both keep rows in input order while batching them by length, and share the opt-in fast paths: bf16 autocast
and dynamic int8 quantization of the linear layers.
"""

import contextlib
import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from agnews.checkpoints import LOG_ROOT, find_checkpoint, read_checkpoint
from agnews.data.batching import PadCollator, SortedBatchSampler, TokenizedDataset, in_original_order
from agnews.data.texts import encode
from agnews.errors import AGNewsError
from agnews.modeling.backbone import CHECKPOINT_FILES_KEY
from agnews.modeling.fast_paths import FastPaths
from agnews.precision import choose, eval_batch_size, pad_multiple

OUTPUT_SUFFIXES = (".csv", ".jsonl")
PRECISIONS = ("auto", "32", "bf16", "int8")


# ---- the model on a CPU ----


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every linear layer, in place: weights int8 with one scale per output
    channel (one scale per tensor costs several times more accuracy; docs/performance.md), activations
    quantized per batch."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency here; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def autocast(precision: str):
    """The context a forward pass runs in: bf16 autocast for `bf16`, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_precision(precision: str) -> str:
    """`auto` resolved for this CPU (bf16 where native, else 32); a named one kept (warned if bf16 is emulated)."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise AGNewsError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)} "
            f"(auto: bf16 where the CPU has it natively, else 32; 32: fp32; bf16: autocast; int8: dynamic quantization)"
        )
    return choose(precision, "cpu", fast="bf16", plain="32")


@dataclass(frozen=True)
class Prediction:
    label: str | None  # None for an empty text
    score: float | None  # probability of `label`
    probs: dict[str, float]


class Classifier:
    """A trained classifier for plain Python: `Classifier.from_checkpoint("best").predict(["text", ...])`."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        class_names: Sequence[str],
        max_length: int = 128,
        batch_size: int | None = None,
        precision: str = "auto",
        owned: bool = False,
    ):
        """
        Args:
            model: an `AGNewsClassifier`, or a Hugging Face sequence-classification model.
            owned: the model is the Classifier's alone (`from_checkpoint`): int8 quantizes it in place instead
                of a copy.
            batch_size: rows per forward pass; None: the fastest measured for the precision (fp32 and int8 32,
                bf16 64).
            precision: `auto` (bf16 where the CPU runs it natively, else fp32), `32` (fp32), `bf16` (autocast)
                or `int8` (dynamic quantization of the linear layers). See docs/performance.md (Inference).
        """
        self.precision = check_precision(precision)
        if self.precision == "int8" and not owned:
            model = copy.deepcopy(model)  # quantizing rewrites the layers: the caller's model stays as it was
        self.model = model
        encoder = getattr(model, "model", model)  # the Hugging Face model inside an AGNewsClassifier
        if self.precision == "int8":
            quantize_int8(encoder)
        # an AGNewsClassifier's own fast paths (its switches kept); a Hugging Face model gets its own here
        self.fast = getattr(model, "fast", None) or FastPaths(encoder)
        self.tokenizer = tokenizer
        self.class_names = list(class_names)
        self.max_length = max_length
        self.batch_size = batch_size or eval_batch_size(self.precision)
        self.checkpoint: Path | None = None  # the file it was loaded from

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike = "best", log_root: str | os.PathLike = LOG_ROOT, **kwargs
    ) -> "Classifier":
        """`path`: a `.ckpt` file, or `best`/`last` of the latest run under `log_root`."""
        from agnews.modeling.module import AGNewsClassifier

        path = find_checkpoint(Path(log_root), str(path))
        checkpoint = read_checkpoint(path)
        if "hyper_parameters" not in checkpoint or not checkpoint.get(CHECKPOINT_FILES_KEY):
            raise AGNewsError(
                f"checkpoint {path} was not written by agnews fit (no model settings or tokenizer inside)"
            )
        module = AGNewsClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        names = module.label_names
        kwargs.setdefault("max_length", checkpoint.get("datamodule_hyper_parameters", {}).get("max_length", 128))
        classifier = cls(module, module.tokenizer, names, owned=True, **kwargs)
        classifier.checkpoint = path
        return classifier

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities, one row per text in input order (float32; NaN rows for empty texts)."""
        return self.logits(texts).softmax(-1)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """The head's raw scores, one row per text in input order (float32; NaN rows for empty texts)."""
        if isinstance(texts, str):
            texts = [texts]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise AGNewsError(
                f"texts must be strings; text {bad[0]} is {type(texts[bad[0]]).__name__} {texts[bad[0]]!r}"
            )
        scores = torch.full((len(texts), len(self.class_names)), float("nan"))
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if not keep:
            return scores
        dataset = TokenizedDataset(encode(self.tokenizer, [texts[i] for i in keep], self.max_length))
        batches = SortedBatchSampler(SequentialSampler(dataset), self.batch_size, lengths=dataset.lengths)
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=PadCollator(self.tokenizer.pad_token_id or 0, pad_multiple(self.precision)),
        )
        outputs = []
        with torch.inference_mode(), autocast(self.precision), self.fast.evaluating():
            for batch in loader:
                ids, mask = batch["input_ids"], batch["attention_mask"]
                with self.fast.around("predict", ids, mask):
                    logits = self.fast.model(input_ids=ids, attention_mask=mask).logits
                outputs.append({"index": batch["index"], "logits": logits.float()})
        scores[keep] = in_original_order(outputs)["logits"]
        return scores

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction(row) for row in self.predict_proba(texts)]

    def _prediction(self, row: torch.Tensor) -> Prediction:
        if row.isnan().any():
            return Prediction(None, None, {})
        best = int(row.argmax())
        return Prediction(
            self.class_names[best], float(row[best]), dict(zip(self.class_names, row.tolist(), strict=False))
        )
