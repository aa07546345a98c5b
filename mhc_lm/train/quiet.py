"""Third-party messages that tell the user nothing, filtered at their source (each one named; no
blanket filter). Imported by `mhc_lm.train.config`, so every entry point that reads a run config
installs them before DeepSpeed or datasets are imported."""

from __future__ import annotations

import logging

# DeepSpeed (deepspeed/accelerator/real_accelerator.py) logs this on every CPU-only import
DEEPSPEED_NO_ACCELERATOR = "we were unable to detect it"


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def install() -> None:
    """Idempotent: one filter per message on the logger that emits it (created here if not yet)."""
    logger = logging.getLogger("DeepSpeed")  # deepspeed.utils.logging's logger: same object once it is created
    if not any(isinstance(f, _DropMessage) and f.fragment == DEEPSPEED_NO_ACCELERATOR for f in logger.filters):
        logger.addFilter(_DropMessage(DEEPSPEED_NO_ACCELERATOR))


install()
