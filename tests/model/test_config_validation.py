"""MhcLmConfig refuses values that would build a broken or absurd model, with the field named."""

from __future__ import annotations

import math

import pytest

from mhc_lm.model.configuration_mhc_lm import MAX_STREAMS

from .helpers import tiny_config


@pytest.mark.parametrize("kwargs, message", [
    ({"rms_norm_eps": 0.0}, "rms_norm_eps must be a finite number > 0"),
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps must be a finite number > 0"),
    ({"rms_norm_eps": math.nan}, "rms_norm_eps must be a finite number > 0"),
    ({"rope_theta": 0.0}, "rope_theta must be a finite number > 0"),
    ({"rope_theta": -10000.0}, "rope_theta must be a finite number > 0"),
    ({"rope_theta": math.inf}, "rope_theta must be a finite number > 0"),
    ({"attention_dropout": 1.0}, r"attention_dropout must be a probability in \[0, 1\)"),
    ({"attention_dropout": -0.1}, r"attention_dropout must be a probability in \[0, 1\)"),
    ({"attention_dropout": math.nan}, r"attention_dropout must be a probability in \[0, 1\)"),
    ({"head_dim": 0}, "head_dim must be a positive integer"),
    ({"head_dim": -8}, "head_dim must be a positive integer"),
    ({"n_streams": MAX_STREAMS + 1}, f"n_streams must be <= {MAX_STREAMS}"),
    ({"n_streams": 100000, "residual_mode": "mhc"}, f"n_streams must be <= {MAX_STREAMS}"),
])
def test_invalid_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


@pytest.mark.parametrize("kwargs", [{"rms_norm_eps": 1e-5}, {"rope_theta": 500000.0}, {"attention_dropout": 0.0},
                                    {"attention_dropout": 0.5}, {"head_dim": 16}, {"n_streams": MAX_STREAMS}])
def test_valid_values_pass(kwargs):
    tiny_config(**kwargs)
