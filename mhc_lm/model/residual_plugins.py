"""Residual modes registered from outside the model folder (none in the source tree).

`save_pretrained` of a model whose mode was registered at run time (`register_residual_mode`)
rewrites this file in the exported folder with the mode's class source and its registration
(`residual_modes.write_plugin_modes`); `configuration_mhc_lm.py` imports it, so the exported
model knows its mode when it loads with `trust_remote_code` and no `mhc_lm`.
"""

PLUGIN_MODES: tuple = ()
