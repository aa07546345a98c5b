"""The residual-mode registry: `residual_mode` name -> `ResidualMode` class.

    standard   residual_standard.StandardMode   x + F(x)
    hc         residual_hc.HcMode               n streams, learned mixing (arXiv 2409.19606)
    mhc        residual_mhc.MhcMode             n streams, H_res on a manifold (arXiv 2512.24880)
    grid       residual_grid.GridMode           R x R bifurcation-merge of blocks (Park & Han)

Everything that needs the list of modes reads it here (the config's validation, the run config,
the launchers, the evaluations and benchmarks), and the model asks the mode for its streams,
connections, layer loop and init (`residual_mode.py`), so adding a mode is one new file in this
folder with a `ResidualMode` subclass, plus its class in `_BUILT_IN` below.

A mode can also be registered from outside the folder, at run time, with
`register_residual_mode(cls)` (a plugin: tests/model/test_residual_mode_registry.py trains one).
Such a class is not in the folder that `save_pretrained` copies, so the export writes its
source into the exported `residual_plugins.py` (`write_plugin_modes`), which
`configuration_mhc_lm.py` imports: the exported model then loads with `trust_remote_code` and no
`mhc_lm`. For that the plugin's class must be self-contained: its body may use the names
`math`, `torch`, `nn`, `F`, `init` (transformers.initialization) and the folder's base classes (`PLUGIN_HEADER`), nothing else of the
module that defined it; helper modules belong inside the class body.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

from .residual_grid import GridMode
from .residual_hc import HcMode
from .residual_mhc import MhcMode
from .residual_mode import ResidualMode
from .residual_standard import StandardMode

_BUILT_IN = (StandardMode, HcMode, MhcMode, GridMode)

RESIDUAL_MODES: dict[str, type[ResidualMode]] = {mode.name: mode for mode in _BUILT_IN}
"""Registry, name -> mode class; the keys are the valid `residual_mode` values."""


def register_residual_mode(mode: type[ResidualMode]) -> type[ResidualMode]:
    """Add `mode` under `mode.name` (usable as a class decorator); a name taken by another class is an error."""
    if not (isinstance(mode, type) and issubclass(mode, ResidualMode)) or not mode.name:
        raise ValueError(f"a residual mode is a ResidualMode subclass with a name, got {mode!r}")
    known = RESIDUAL_MODES.get(mode.name)
    if known is not None and known is not mode and known.__qualname__ != mode.__qualname__:
        raise ValueError(f"residual_mode {mode.name!r} is already registered ({known.__module__}.{known.__qualname__})")
    RESIDUAL_MODES[mode.name] = mode
    return mode


def get_residual_mode(name: str) -> type[ResidualMode]:
    """The mode class called `name`, with an error listing the valid names."""
    if name not in RESIDUAL_MODES:
        raise ValueError(f"residual_mode must be one of {list(RESIDUAL_MODES)}, got {name!r}")
    return RESIDUAL_MODES[name]


def residual_mode_of(config) -> ResidualMode:
    """The residual mode of `config`, bound to it."""
    return get_residual_mode(config.residual_mode)(config)


PLUGIN_HEADER = '''"""Residual modes registered from outside the model folder, copied in by save_pretrained
(`residual_modes.write_plugin_modes`): the exported model needs them to load."""

from __future__ import annotations

import math  # noqa: F401

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401
from torch import nn  # noqa: F401
from transformers import initialization as init  # noqa: F401

from .residual_mode import ResidualMode  # noqa: F401
from .residual_modes import register_residual_mode
from .residual_standard import StandardMode, StandardResidual  # noqa: F401
from .stream_connection import MultiStreamMode, StreamConnection  # noqa: F401
'''


def _is_plugin(mode: type[ResidualMode]) -> bool:
    module = sys.modules.get(mode.__module__)
    source = getattr(module, "__file__", None)
    return source is None or Path(source).resolve().parent != Path(__file__).resolve().parent


def write_plugin_modes(folder: str | Path, residual_mode: str) -> None:
    """Write `folder`/residual_plugins.py so that the folder's copy of the model knows
    `residual_mode` when it was registered from outside the model folder (no-op otherwise)."""
    mode = RESIDUAL_MODES.get(residual_mode)
    if mode is None or not _is_plugin(mode):
        return
    source = textwrap.dedent(inspect.getsource(mode))
    body = (f"{PLUGIN_HEADER}\n\n{source.rstrip()}\n\n\nregister_residual_mode({mode.__name__})\n"
            f"PLUGIN_MODES = ({mode.__name__},)\n")
    Path(folder, "residual_plugins.py").write_text(body)
