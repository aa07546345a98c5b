"""The run config's model section (mhc_lm.train.config.ModelSection) mirrors MhcLmConfig: the same
names, the same choices where the section spells them out, and the registry names checked from the
registries, so the model config is written once (in MhcLmConfig) and cannot drift."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from mhc_lm.config_utils import ConfigError
from mhc_lm.model import H_RES_MAPS, RESIDUAL_MODES, MhcLmConfig
from mhc_lm.model import configuration_mhc_lm as cm
from mhc_lm.train.config import RETIRED_MODEL_FIELDS, ModelSection, build_model_config, model_kwargs

NOT_IN_RUN_CONFIG = {"use_cache"}  # inference-time switch, not a training setting


def test_model_section_fields_are_mhc_lm_config_parameters():
    params = {name for name, p in inspect.signature(MhcLmConfig.__init__).parameters.items()
              if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
    fields = {f.name for f in dataclasses.fields(ModelSection)} - {"preset", *RETIRED_MODEL_FIELDS}
    assert fields == params - NOT_IN_RUN_CONFIG
    assert not set(RETIRED_MODEL_FIELDS) & params  # a retired field is gone from the model


@pytest.mark.parametrize("field, choices", [("mhc_init", cm.MHC_INITS), ("mixing_recompute", cm.MIXING_RECOMPUTES),
                                            ("block_norm", cm.BLOCK_NORMS)])
def test_spelled_out_choices_equal_the_model_configs(field, choices):
    hint = typing.get_type_hints(ModelSection)[field]
    literal = next(a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal)
    assert typing.get_args(literal) == choices


@pytest.mark.parametrize("field, registry", [("residual_mode", RESIDUAL_MODES), ("h_res_map", H_RES_MAPS)])
def test_registry_names_are_read_from_the_registry(field, registry, monkeypatch):
    with pytest.raises(ConfigError, match=rf"model\.{field}: 'nope' is not one of"):
        ModelSection(**{field: "nope"})
    for name in registry:
        ModelSection(**{field: name})
    monkeypatch.setitem(registry, "nope", registry[next(iter(registry))])  # a registered name is valid at once
    ModelSection(**{field: "nope"})


def test_retired_stream_collapse_loads_and_is_dropped():
    section = ModelSection(stream_collapse="mean", residual_mode="mhc")  # run configs written before its removal
    assert "stream_collapse" not in model_kwargs(section)
    assert not hasattr(build_model_config(section), "stream_collapse")
    with pytest.raises(ConfigError, match="stream_collapse"):
        ModelSection(stream_collapse="max")
