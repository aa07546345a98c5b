"""Checkpoint conversion: Llama in (`from_llama`), Llama out (`to_llama`), and upcycling a
standard model into n-stream hc / mhc (`upcycle`). CLI: `launch/convert.py`; the maths of the
exact upcycle is in docs/continued_pretraining.md."""

from mhc_lm.convert.llama import from_llama, to_llama
from mhc_lm.convert.source import ConversionError, load_source
from mhc_lm.convert.upcycle import upcycle

__all__ = ["ConversionError", "from_llama", "load_source", "to_llama", "upcycle"]
