"""Shared test setup: offline hub, deterministic threads, GPU/slow markers."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Triton decides interpreted-or-compiled for each @triton.jit function when it is decorated,
# and that includes triton.language's own helpers (tl.sum, tl.sigmoid, ...), decorated when
# triton is first imported. DeepSpeed, torch.compile and others import triton lazily, so in a
# whole-suite run triton would otherwise be imported in compiled mode by an earlier test and
# the CPU kernel tests (tests/kernels, TRITON_INTERPRET=1) would then fail with
# "Cannot call @triton.jit'd outside of the scope of a kernel". Import triton and the kernels
# here, first, under the interpreter, then restore the environment so nothing else (and no
# spawned process) sees the variable. The GPU kernel test runs the compiled kernels in a
# process of its own (tests/kernels/test_custom_ops.py).


def _import_triton_interpreted() -> None:
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
        import triton.experimental.gluon  # noqa: F401

        import mhc_lm.kernels  # noqa: F401
    except ImportError:  # no triton: the kernel tests skip themselves
        pass
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_interpreted()

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
