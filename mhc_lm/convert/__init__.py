"""Checkpoint conversion: Llama in (`from_llama`), Llama out (`to_llama`), and upcycling a
standard model into n-stream hc / mhc (`upcycle`). CLI: `launch/convert.py`; the maths of the
exact upcycle is in docs/continued_pretraining.md. Sources are read by mhc_lm/train/model_source.py,
which `train.init_from` shares."""

from mhc_lm.convert.llama import from_llama, to_llama
from mhc_lm.convert.upcycle import upcycle
from mhc_lm.train.model_folder import ConversionError
from mhc_lm.train.model_source import load_source

__all__ = ["ConversionError", "from_llama", "load_source", "to_llama", "upcycle"]
