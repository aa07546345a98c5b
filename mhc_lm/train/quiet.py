"""Third-party messages that tell the user nothing, filtered at their source: each one named, on the
logger that emits it (no blanket filter). Imported by `mhc_lm.train.config`, so every entry point
that reads a run config installs them before DeepSpeed or Accelerate log anything."""

from __future__ import annotations

import logging

# (logger name, message fragment) of each dropped message
FILTERED = (
    # DeepSpeed (deepspeed/accelerator/real_accelerator.py) logs this on every CPU-only import
    ("DeepSpeed", "we were unable to detect it"),
    # Accelerate's checkpoint save (accelerate/utils/other.py) on every checkpoint of a model with tied
    # embeddings: the tie is restored on load (the model's _tied_weights_keys), nothing is lost
    ("accelerate.utils.other", "Removed shared tensor {'lm_head.weight'} while saving"),
)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def install() -> None:
    """Idempotent: one filter per message on the logger that emits it (the logger object is created here
    if its library is not imported yet; the library then gets the same object)."""
    for name, fragment in FILTERED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessage(fragment))

install()
