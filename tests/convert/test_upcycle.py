"""upcycle: standard -> hc / mhc computes the source's function at conversion, and training moves
the mixing parameters (and separates the streams) from there."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mhc_lm.convert.upcycle import upcycled_model
from mhc_lm.train.model_source import load_source
from tests.convert.helpers import convert, llama_folder, logits, token_ids


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random GQA Llama with untied head, and its logits on a fixed batch."""
    folder = llama_folder(tmp_path_factory.mktemp("upcycle") / "llama", num_hidden_layers=3)
    ids = token_ids(128)
    return folder, ids, logits(AutoModelForCausalLM.from_pretrained(folder).eval(), ids)


@pytest.mark.parametrize("mode, n, extra", [
    ("hc", 4, []), ("hc", 8, []), ("mhc", 4, []), ("mhc", 8, []),
    ("mhc", 4, ["--mhc-init", "identity"]), ("mhc", 4, ["--h-res-map", "orthostochastic"]),
    ("mhc", 4, ["--h-res-map", "orthogonal"]), ("mhc", 4, ["--h-res-map", "kronecker"]),
    ("grid", 1, ["--grid-size", "1"]),
])
def test_upcycle_keeps_the_logits(source, mode, n, extra, tmp_path):
    folder, ids, expected = source
    out = tmp_path / f"{mode}{n}"
    assert convert("upcycle", folder, out, "--residual-mode", mode, "--n-streams", n, *extra) == 0
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert model.config.residual_mode == mode and model.config.streams == (n if mode != "grid" else 1)
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def _train(model, steps: int = 3, lr: float = 1e-2):
    """AdamW on random tokens; returns the gradients of the first step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = None
    for step in range(steps):
        ids = token_ids(128, seed=10 + step, shape=(4, 16))
        loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        if first is None:
            first = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad()
    return first


def _mixing(model):
    return {k: p for k, p in model.named_parameters() if "_mixing." in k}


@pytest.mark.parametrize("mode", ["hc", "mhc"])
def test_training_moves_every_mixing_parameter_and_separates_the_streams(source, mode):
    torch.manual_seed(0)
    model = upcycled_model(load_source(source[0]), mode, 4).train()
    before = {k: p.detach().clone() for k, p in _mixing(model).items()}
    assert before
    grads = _train(model)
    # gradients at step 0: the static/bias terms and the projections are not stuck at zero
    live = ("static_alpha_m", "static_alpha_r", "static_beta", "dynamic_proj") if mode == "hc" else ("phi", "bias")
    for k, g in grads.items():
        if k.rsplit(".", 1)[-1] in live:
            assert g.abs().max() > 0, f"{k}: zero gradient at step 0"
    for k, p in _mixing(model).items():
        assert not torch.equal(p.detach(), before[k]), f"{k} did not move in 3 steps"
    # the streams stop being copies: the weights writing F(x) into each stream get different gradients
    # (every sub-layer but the last, whose streams only feed the collapse mean)
    n = 4
    for layer in model.model.layers:
        prefix = f"model.layers.{layer.self_attn.layer_idx}.attn_mixing."
        post = grads[prefix + "static_beta"] if mode == "hc" else grads[prefix + "bias"][n:2 * n]
        assert post.std() > 1e-3 * post.abs().max(), f"{prefix}: every stream gets the same gradient"


def test_symmetric_h_pre_keeps_the_streams_copies(source):
    """Why the upcycle puts more H_pre weight on a home stream: with H_pre uniform (1/n) nothing
    distinguishes the streams, every one gets the same gradient, and they stay copies."""
    torch.manual_seed(0)
    model = upcycled_model(load_source(source[0]), "mhc", 4, pre_home_weight=0.25).train()
    grads = _train(model)
    for name, g in grads.items():
        if name.endswith("_mixing.bias"):
            for part in (g[0:4], g[4:8]):  # b_pre, b_post: one value for all streams
                torch.testing.assert_close(part, part[:1].expand(4), atol=1e-6 * float(part.abs().max()), rtol=0)


@pytest.mark.parametrize("argv, named", [
    (["--residual-mode", "grid", "--grid-size", "2"], "grid_size 1"),
    (["--residual-mode", "mhc", "--n-streams", "1"], "--n-streams 1"),
    (["--residual-mode", "hc", "--h-res-map", "sinkhorn"], "--h-res-map"),
    (["--residual-mode", "mhc", "--n-streams", "8", "--h-res-map", "permutation"], "permutation"),
    (["--residual-mode", "mhc", "--pre-home-weight", "1.0"], "--pre-home-weight"),
])
def test_upcycle_refusals(source, argv, named, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert("upcycle", source[0], out, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert not out.exists()


def test_upcycle_refuses_a_stream_source(source, tmp_path, capsys):
    assert convert("upcycle", source[0], tmp_path / "hc", "--residual-mode", "hc", "--n-streams", 2) == 0
    assert convert("upcycle", tmp_path / "hc", tmp_path / "twice", "--residual-mode", "mhc") == 2
    assert "only standard models are upcycled" in capsys.readouterr().err
