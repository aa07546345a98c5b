"""Third-party messages that tell the user nothing, filtered at their source: each one named, on the
logger that emits it (no blanket filter). Imported by `mhc_lm.train.config`, so every entry point
that reads a run config installs them before DeepSpeed or Accelerate log anything. When stderr is
not a terminal, Hugging Face progress bars are switched off too (HF_HUB_DISABLE_PROGRESS_BARS, unless
set); the trainer's and data preparation's own bars follow the same rule."""

from __future__ import annotations

import logging
import os
import sys

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
    if not sys.stderr.isatty():  # a log file: transformers' bars ("Writing model shards", "Loading weights") are noise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers when it is imported
        if "transformers" in sys.modules:  # already imported: switch them off directly
            sys.modules["transformers"].utils.logging.disable_progress_bar()

install()
