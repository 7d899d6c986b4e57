"""The speed tricks that rewrite an encoder at run time, behind one entry point: `FastPaths`.

Each keeps the model's results, and each can be switched off (tests/test_fast_paths.py compares each, on and
off, with the plain model):
- the last layer at the first token only, for a first-token head (agnews.modeling.first_token; off:
  `--model.first_token_only false`);
- the frozen layers' outputs kept from the first epoch for the later ones (agnews.modeling.frozen_outputs; off:
  `--model.frozen_outputs_gb 0`);
- the attention kernel per stage: eager or SDPA while training (`--model.attention`), SDPA for evaluation,
  its keys padded to a multiple of 16 under bf16 on a CPU with AMX (agnews.modeling.attention; off:
  `--model.padded_attention false`).
The LightningModule and the `Classifier` apply them only through `around()`, `use_attention()` and
`use_evaluation_attention()`.
"""

from contextlib import ExitStack, contextmanager

from torch import nn

from agnews.internals import attention_of, can_switch_attention
from agnews.modeling.attention import evaluation_attention
from agnews.modeling.first_token import FirstTokenLayer
from agnews.modeling.frozen_outputs import FrozenOutputs


def use_attention(model: nn.Module, implementation: str | None) -> None:
    """Switch a loaded encoder's attention kernel (`eager`, `sdpa`). Encoders written before transformers'
    attention interface (MPNet) cannot switch and keep their one built-in attention."""
    if implementation and attention_of(model) != implementation and can_switch_attention(model):
        model.set_attn_implementation(implementation)


class FastPaths:
    """The fast paths of one Hugging Face sequence classifier (`model`)."""

    def __init__(self, model: nn.Module, first_token: bool = True, padded_attention: bool = True):
        self.model = model
        self.evaluation_attention = evaluation_attention(padded_attention)
        # a first-token head reads one row of the last layer: only that row is computed
        self.first_token = FirstTokenLayer.for_model(model) if first_token else None
        self.frozen_outputs: FrozenOutputs | None = None

    def start_fit(self, freeze_layers: int, budget_gb: float, datasets, epochs: int | None) -> None:
        """Keep the frozen layers' outputs for this fit where they apply (frozen layers, no dropout in them, the
        rows seen more than once) and fit `budget_gb`."""
        self.frozen_outputs = None  # a model fitted again starts afresh
        if epochs != 1:
            self.frozen_outputs = FrozenOutputs.for_fit(self.model, freeze_layers, budget_gb, datasets)

    def end_fit(self) -> None:
        if self.frozen_outputs is not None:
            self.frozen_outputs.clear()  # its memory goes; its count of reused batches stays for the summary

    @property
    def reused(self) -> int:
        """Batches that started from kept outputs in the last fit."""
        return self.frozen_outputs.reused if self.frozen_outputs is not None else 0

    @contextmanager
    def around(self, stage: str | None, input_ids, attention_mask):
        """The forward pass of one batch, with what applies to `stage` (kept outputs: `train` and `val` only)."""
        with ExitStack() as stack:
            if self.frozen_outputs is not None and stage in ("train", "val"):
                stack.enter_context(self.frozen_outputs.around(stage, input_ids, attention_mask))
            if self.first_token is not None:
                stack.enter_context(self.first_token.around())
            yield

    def use_attention(self, implementation: str | None) -> None:
        use_attention(self.model, implementation)

    def use_evaluation_attention(self) -> None:
        use_attention(self.model, self.evaluation_attention)

    @contextmanager
    def evaluating(self):
        """Eval mode and the fastest evaluation kernel; the model's own mode and kernel back afterwards (a model
        the caller owns stays as it was)."""
        training, attention = self.model.training, attention_of(self.model)
        self.model.eval()
        self.use_evaluation_attention()
        try:
            yield
        finally:
            self.use_attention(attention)
            self.model.train(training)
