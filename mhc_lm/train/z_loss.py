"""PaLM's auxiliary z-loss (Chowdhery et al., arXiv 2204.02311, section 5): a penalty on the log of
the softmax normaliser that keeps it near 0 (the logits from drifting), added on the training side.

    z_loss = coef * mean over target tokens of (log Z)^2,   log Z = logsumexp over the vocabulary of the logits

PaLM uses coef = 1e-4. The mean is over the tokens whose label is not the ignore index (-100), the
same tokens the cross-entropy averages. `optim.z_loss: 0` (the default) leaves the loss and its
gradient untouched: the trainer then backpropagates the model's loss alone, bit for bit as without
this module. The logged `loss` stays the cross-entropy (comparable across runs); the z term is
logged as `z_loss` (its mean over the step's micro-batches and processes) when the coefficient is
non-zero. It works the same in every residual mode: it only reads the LM head's logits.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def z_loss(logits: torch.Tensor, labels: torch.Tensor, coef: float) -> torch.Tensor:
    """coef * mean((logsumexp(logits, -1))^2) over positions with labels != -100; logits (..., V), fp32."""
    log_z = torch.logsumexp(logits.float(), dim=-1)
    mask = (labels != IGNORE_INDEX).to(log_z.dtype)
    return coef * (log_z.pow(2) * mask).sum() / mask.sum().clamp_min(1.0)


class ZLoss:
    """The trainer's z-loss term and its log line (a callback: `on_step_end` adds `z_loss`)."""

    def __init__(self, coef: float):
        self.coef = float(coef)
        self._sum = None
        self._count = 0

    def __bool__(self) -> bool:
        return self.coef != 0.0

    def __call__(self, output, labels: torch.Tensor) -> torch.Tensor:
        """The z term of one micro-batch (added to its loss before backward); kept for the log."""
        term = z_loss(output.logits, labels, self.coef)
        value = term.detach().float()
        self._sum = value if self._sum is None else self._sum + value
        self._count += 1
        return term

    def on_train_begin(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        if self._sum is None:
            return
        mean = trainer.accelerator.reduce(self._sum / self._count, "mean")
        logs["z_loss"] = float(mean.item())
        self._sum, self._count = None, 0

    def on_rewind(self, trainer) -> None:
        self._sum, self._count = None, 0  # the vetoed step's terms

    def on_train_end(self, trainer) -> None:
        pass
