"""A residual mode is one class registered by name: this file defines a toy mode, registers it
from here alone (no other file of the repository names it), trains it through the Trainer,
exports it and reloads it with AutoModelForCausalLM in a process that cannot import mhc_lm."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from transformers import initialization as init

from mhc_lm.model import RESIDUAL_MODES, MhcLmConfig, MhcLmForCausalLM, ResidualMode, register_residual_mode
from mhc_lm.model.configuration_mhc_lm import modes_with
from mhc_lm.model.residual_modes import get_residual_mode

from .helpers import tiny_config


class ToyGatedMode(ResidualMode):
    """x + g F(x) with a learned gate g per sub-layer, 0.5 at init; an even number of layers."""

    name = "toy_gated"
    supports_post_norm = False

    class Connection(nn.Module):
        def __init__(self, sublayer_idx: int):
            super().__init__()
            self.sublayer_idx = sublayer_idx
            self.gate = nn.Parameter(torch.zeros(1))

        def forward(self, x, sublayer, recompute=None):
            return x + self.gate * sublayer(x)

    @classmethod
    def validate(cls, config) -> None:
        if config.num_hidden_layers % 2:
            raise ValueError(f"toy_gated needs an even num_hidden_layers, got {config.num_hidden_layers}")

    def connection(self, sublayer_idx: int) -> nn.Module:
        return type(self).Connection(sublayer_idx)

    def init_weights(self, module: nn.Module) -> bool:
        if not isinstance(module, type(self).Connection):
            return False
        init.constant_(module.gate, 0.5)
        return True


@pytest.fixture
def toy_mode():
    register_residual_mode(ToyGatedMode)
    yield ToyGatedMode
    RESIDUAL_MODES.pop(ToyGatedMode.name)


def test_the_registry_is_the_list_of_modes():
    assert list(RESIDUAL_MODES) == ["standard", "hc", "mhc", "grid"]
    assert all(get_residual_mode(name).name == name for name in RESIDUAL_MODES)
    assert modes_with("stream_mixing") == ["hc", "mhc"] and modes_with("uses_h_res_map") == ["mhc"]
    with pytest.raises(ValueError, match=r"residual_mode must be one of \['standard', 'hc', 'mhc', 'grid'\]"):
        tiny_config("toy_gated")


def test_a_name_taken_by_another_class_is_refused(toy_mode):
    other = type("ToyGatedMode2", (ResidualMode,), {"name": "toy_gated"})
    with pytest.raises(ValueError, match="already registered"):
        register_residual_mode(other)
    with pytest.raises(ValueError, match="ResidualMode subclass"):
        register_residual_mode(object)


def test_toy_mode_builds_validates_and_inits(toy_mode):
    model = MhcLmForCausalLM(tiny_config("toy_gated"))
    gates = [m.gate for layer in model.model.layers for m in (layer.attn_mixing, layer.mlp_mixing)]
    assert len(gates) == 8 and all(torch.equal(g, torch.full((1,), 0.5)) for g in gates)
    with pytest.raises(ValueError, match="toy_gated needs an even num_hidden_layers"):
        tiny_config("toy_gated", num_hidden_layers=3)
    with pytest.raises(ValueError, match="block_norm='post' is defined for residual_mode standard and grid"):
        tiny_config("toy_gated", block_norm="post")  # the mode's capability flag, read by the config
    with pytest.raises(ValueError, match="applies to residual_mode hc or mhc only"):
        tiny_config("toy_gated", mixing_recompute="sublayer")
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad():  # the gate scales every sub-layer's output: g = 0 is the embedding alone
        for g in gates:
            g.zero_()
        zeroed = model.model(ids).last_hidden_state
    torch.testing.assert_close(zeroed, model.model.norm(model.model.embed_tokens(ids)))


CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["mhc_lm"] = None  # the exported folder must not need the package
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.set_num_threads(1)
    path, ids_path = sys.argv[1], sys.argv[2]
    expected = torch.load(ids_path)
    lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = lm(expected["ids"]).logits
    gates = [float(m.gate) for layer in lm.model.layers for m in (layer.attn_mixing, layer.mlp_mixing)]
    print(json.dumps({"mode": AutoConfig.from_pretrained(path, trust_remote_code=True).residual_mode,
                      "module": type(lm).__module__, "gates": gates,
                      "max_diff": float((logits - expected["logits"]).abs().max())}))
""")


def test_toy_mode_trains_exports_and_round_trips(toy_mode, tmp_path):
    from mhc_lm.train import Trainer
    from tests.train.helpers import one_thread, tiny_config as run_config, toy_data

    config = run_config(tmp_path / "run", "toy_gated", train={"max_steps": 4, "export_hf": True})
    with one_thread():
        trainer = Trainer(config, data=toy_data(config))
        assert trainer.fit() == "completed"
    model = trainer.unwrapped_model.eval()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    gates = [m.gate.item() for layer in model.model.layers for m in (layer.attn_mixing, layer.mlp_mixing)]
    assert any(g != 0.5 for g in gates)  # trained: the mode's parameters got gradients and moved

    hf = tmp_path / "run" / "hf"
    assert "class ToyGatedMode(ResidualMode)" in (hf / "residual_plugins.py").read_text()
    assert json.loads((hf / "config.json").read_text())["residual_mode"] == "toy_gated"
    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), one_thread():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(hf), str(tmp_path / "expected.pt")],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mode"] == "toy_gated" and not out["module"].startswith("mhc_lm")
    assert out["gates"] == pytest.approx(gates, abs=0)  # the trained gates loaded, not re-initialised
    assert out["max_diff"] <= 1e-5, out


def test_config_save_pretrained_alone_carries_the_plugin(toy_mode, tmp_path):
    tiny_config("toy_gated").save_pretrained(tmp_path)
    assert "register_residual_mode(ToyGatedMode)" in (tmp_path / "residual_plugins.py").read_text()
    loaded = MhcLmConfig.from_pretrained(tmp_path)
    assert loaded.residual_mode == "toy_gated"


def test_flop_count_reads_the_modes_mixing_width():
    """mhc's projection is nC x (2n + K), K the H_res map's logits: n^2 for sinkhorn, log2 n for kronecker."""
    from mhc_lm.train.run_log import flops_per_token

    base = flops_per_token(tiny_config("standard"), 16)
    for h_res_map, K in (("sinkhorn", 16), ("kronecker", 2), ("orthogonal", 6)):
        c = tiny_config("mhc", h_res_map=h_res_map)
        extra = c.num_hidden_layers * 2 * c.n_streams * c.hidden_size * (2 * c.n_streams + K)
        assert flops_per_token(c, 16) - base == pytest.approx(6.0 * extra), h_res_map
    assert flops_per_token(tiny_config("grid"), 16) == base  # no mixing weights
