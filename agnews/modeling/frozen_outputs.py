"""Reuse of the frozen lower layers' outputs from one epoch to the next.

With the embeddings and the lowest N encoder layers frozen (`--model.freeze_layers N`) and dropout off, a row's
hidden states after layer N are the same in every epoch. The first time a row is seen they are kept (its real
tokens only, keyed by its token ids); once every row of a batch has them, the forward pass starts there and runs
only the trained layers. Kept in memory up to a budget, dropped when `fit` ends, and thrown away whenever a
frozen parameter changes.
"""

import sys
from contextlib import contextmanager

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from agnews.internals import version_of
from agnews.modeling.backbone import layer_list


@rank_zero_only  # under DDP every process keeps its own rows; one line says what they all do
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _has_dropout(modules: list[nn.Module]) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for module in modules for m in module.modules())


class FrozenOutputs:
    """The outputs of `model`'s frozen embeddings and lowest `count` layers, per row, up to `budget_bytes`."""

    def __init__(self, model: nn.Module, count: int, budget_bytes: float):
        base = model.base_model
        self.owner, self.layers = layer_list(base)
        self.embeddings = base.embeddings
        self.count = count
        self.budget = budget_bytes
        self.frozen = [p for m in (self.embeddings, *self.layers[:count]) for p in m.parameters()]
        self.trained_layers = nn.ModuleList(self.layers[count:])
        self.rows: dict[str, dict[bytes, torch.Tensor]] = {}
        self.size = 0
        self.reused = 0  # batches that started from kept outputs
        self.enabled = True
        self._versions = self._frozen_state()

    @classmethod
    def for_fit(cls, model: nn.Module, count: int, budget_gb: float, datasets) -> "FrozenOutputs | None":
        """Kept outputs for a fit over `datasets` (with per-row `lengths`), or None where they do not apply or
        would not fit the budget (said in one line)."""
        if budget_gb <= 0 or cls.applies(model, count) is not None:
            return None
        tokens = sum(int(d.lengths.sum()) for d in datasets if d is not None and hasattr(d, "lengths"))
        # the hidden states of every real token, in the weights' precision (bf16 under agnews.training.bf16_weights)
        need = tokens * model.config.hidden_size * model.get_input_embeddings().weight.element_size()
        if need > budget_gb * 2**30:
            _say(
                f"agnews: the frozen layers' outputs of these rows take {need / 2**30:.1f} GiB, more than "
                f"--model.frozen_outputs_gb {budget_gb:g}: they are computed again every epoch"
            )
            return None
        return cls(model, count, budget_gb * 2**30)

    @staticmethod
    def applies(model: nn.Module, count: int) -> str | None:
        """Why the outputs cannot be reused for this model, or None when they can."""
        base = model.base_model
        found = layer_list(base)
        if count < 1 or found is None or not hasattr(base, "embeddings"):
            return "no frozen layers"
        frozen = [base.embeddings, *found[1][:count]]
        if any(p.requires_grad for m in frozen for p in m.parameters()):
            return "the lower layers are trained"
        if _has_dropout(frozen):
            return "dropout changes the frozen layers' outputs from epoch to epoch"
        return None

    def _frozen_state(self) -> tuple:
        # every in-place change (an optimizer step, load_state_dict) moves a tensor's version counter
        return tuple((version_of(p), p.requires_grad, p.data_ptr()) for p in self.frozen)

    def _still_valid(self) -> bool:
        state = self._frozen_state()
        if state == self._versions:
            return True
        self.clear()
        if any(p.requires_grad for p in self.frozen):  # a lower layer is trained now: its outputs change each step
            self.enabled = False
            return False
        self._versions = state
        return True

    def clear(self) -> None:
        self.rows.clear()
        self.size = 0

    def _keep(self, stage: str, keys: list[bytes], hidden: torch.Tensor, mask: torch.Tensor) -> None:
        rows = self.rows.setdefault(stage, {})
        kept = hidden.detach()[mask]  # real tokens only, [tokens, dim]: a copy, shared by the batch's rows
        pieces = kept.split(mask.sum(1).tolist())
        new = [key not in rows for key in keys]
        for key, row, is_new in zip(keys, pieces, new, strict=True):
            if is_new:
                # views of `kept` pin all of it: where some rows are not kept, the kept ones are copied out
                rows[key] = row if all(new) else row.clone()
                self.size += row.numel() * row.element_size()
        if self.size > self.budget:
            self.clear()
            self.enabled = False
            _say(
                f"agnews: the frozen layers' outputs outgrow --model.frozen_outputs_gb "
                f"({self.budget / 2**30:g} GiB); they are computed again every epoch"
            )

    @contextmanager
    def around(self, stage: str, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Within it, the model's forward pass on this batch starts from the kept outputs where every row has
        them; otherwise it runs whole and its rows' outputs are kept. `stage` keeps training and evaluation apart
        (evaluation's tensors are made under inference mode, which training cannot save for backward)."""
        if not self.enabled or not self._still_valid():
            yield
            return
        mask = attention_mask.bool()
        keys = [ids[m].numpy().tobytes() for ids, m in zip(input_ids.cpu(), mask.cpu(), strict=True)]
        rows = self.rows.get(stage, {})
        kept = [rows.get(key) for key in keys]
        if all(row is not None for row in kept):
            hidden = kept[0].new_zeros(*mask.shape, kept[0].shape[-1])
            hidden[mask] = torch.cat(kept)  # padding stays 0: masked out of attention and pooling
            self.embeddings.forward = lambda *args, **kwargs: hidden
            self.owner.layer = self.trained_layers
            try:
                yield
            finally:
                del self.embeddings.forward
                self.owner.layer = self.layers
            self.reused += 1
            return

        def keep(module, args, output):
            self._keep(stage, keys, output[0] if isinstance(output, tuple) else output, mask)

        hook = self.layers[self.count - 1].register_forward_hook(keep)
        try:
            yield
        finally:
            hook.remove()
