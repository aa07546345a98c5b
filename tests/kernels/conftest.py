"""Run the Triton kernels on CPU through the Triton interpreter (TRITON_INTERPRET=1).

Triton decides interpreted-or-compiled when a kernel is decorated, i.e. when `mhc_lm.kernels`
is imported, so the variable is set here before that import (pytest imports this file before
the test modules of this folder). It is then restored, so the rest of a `pytest tests/` session
(and the processes it spawns) never sees it; an autouse fixture sets it again around each
kernel test because triton imports some modules lazily and checks it then.

Without triton, every test here is skipped (the test modules call pytest.importorskip).
"""

import os

import pytest

_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton.experimental.gluon  # noqa: F401  (lazily imported by triton at launch; asserts the mode)

    import mhc_lm.kernels as _kernels
except ImportError:  # no triton: the test modules skip themselves
    _kernels = None
finally:
    if _saved is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _saved


@pytest.fixture(autouse=True)
def _interpret(request, monkeypatch):
    if "gpu" in request.keywords:
        return  # the CUDA test runs its own process without the interpreter
    if _kernels is not None and not _kernels.INTERPRETED:
        pytest.fail(
            "mhc_lm.kernels was imported before tests/kernels/conftest.py without TRITON_INTERPRET=1, "
            "so its kernels are compiled for CUDA; run `pytest tests/kernels` in its own process"
        )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
