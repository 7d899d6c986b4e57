"""The distillation loss a teacher file's logits are learned through (the labels' loss is torch's cross-entropy)."""

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between temperature-softened distributions, times T² so that its gradient keeps
    the scale of the cross-entropy's as T changes (Hinton et al., 2015)."""
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student.float() / t, dim=-1),
            F.log_softmax(teacher.float() / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )
