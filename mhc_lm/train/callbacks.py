"""Trainer callbacks: the hook through which stability probes plug into the loop.

Metrics are callbacks (OLMo-core's `train/callbacks/` pattern): the trainer loop stays short and
probes (loss/grad-norm spikes, Amax gain, vanished gradients) live in `mhc_lm.metrics`. The trainer
imports none of them: whoever builds it hands them over,
`Trainer(config, callbacks=mhc_lm.metrics.build_callbacks(config))` (launch/pretrain.py does).
Every hook is called on every rank (a probe may need a collective forward pass); only the main
process writes the logs. `on_step_end` may add float entries to `logs` before they are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mhc_lm.train.trainer import Trainer


@runtime_checkable
class Callback(Protocol):
    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, logs: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...


class BaseCallback:
    """No-op base: subclass and override only the hooks you need."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", step: int, logs: dict) -> None:
        pass

    def on_train_end(self, trainer: "Trainer") -> None:
        pass

