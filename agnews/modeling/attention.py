"""Evaluation attention for bf16 on a CPU with AMX: SDPA with the keys padded to a multiple of 16.

torch 2.13's CPU flash-attention kernel runs bf16 keys in blocks of 16 on AMX, and the last, partial block costs
about as much as all the full ones together: over 64 rows of MiniLM (12 heads of 32), a self-attention
over 47 keys took 4.7 ms, over 48 keys 2.1 ms. Padding the keys and values with masked zeros to the next multiple
of 16 makes the tail a full block: 0.5-0.9x SDPA's time from 4 keys past a multiple of 16 upwards, 0.85-1.3x
below that (the mask's cost), and slower for a single query (the first-token layer), so those keep plain SDPA.
The output is SDPA's to bf16 rounding. fp32 is not helped (measured 0.7-1.9x) and passes through, as does
anything not on a CPU. docs/performance.md has the measurements.

Registered under transformers' public attention interface, so `set_attn_implementation(PADDED_SDPA)` selects it
wherever the encoder can switch (BERT, DistilBERT; MPNet keeps its own attention).
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from agnews import precision

PADDED_SDPA = "agnews_sdpa_padded_keys"
BLOCK = 16
MIN_TAIL = 4  # keys past a multiple of 16 from which padding pays (measured: 1-3 lose, 4 and more win)


def padded_keys(query: torch.Tensor, key: torch.Tensor) -> int:
    """The masked keys to add: 0 where padding does not pay."""
    tail = key.shape[2] % BLOCK
    pays = query.dtype == torch.bfloat16 and query.device.type == "cpu" and query.shape[2] > 1
    return BLOCK - tail if pays and tail >= MIN_TAIL else 0


def sdpa_padded_keys(module, query, key, value, attention_mask, **kwargs):
    pad = padded_keys(query, key)
    if pad:
        length = key.shape[2]
        key, value = F.pad(key, (0, 0, 0, pad)), F.pad(value, (0, 0, 0, pad))
        if attention_mask is None:  # transformers leaves the mask out where no row has padding
            attention_mask = torch.ones(1, 1, 1, length, dtype=torch.bool, device=key.device)
        if attention_mask.dtype == torch.bool:
            attention_mask = F.pad(attention_mask, (0, pad), value=False)
        else:  # an additive mask
            attention_mask = F.pad(attention_mask, (0, pad), value=torch.finfo(attention_mask.dtype).min)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(PADDED_SDPA, sdpa_padded_keys)
AttentionMaskInterface.register(PADDED_SDPA, sdpa_mask)  # the masks transformers builds for SDPA


def evaluation_attention(padded: bool = True) -> str:
    """The attention kernel for evaluation and prediction: SDPA, with padded keys on a CPU with AMX (where it
    was measured; with bf16 weights only, the function decides per call)."""
    return PADDED_SDPA if padded and "amx_bf16" in (precision.cpu().flags or ()) else "sdpa"
