"""save_pretrained -> copy elsewhere -> Auto*.from_pretrained(trust_remote_code) in a fresh process
where `mhc_lm` cannot be imported: the exported folder must be self-contained."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from mhc_lm.model import MhcLmForCausalLM

from .helpers import MODES, ONE_THREAD_ENV, RELOAD_ATOL, one_thread, tiny_config

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["mhc_lm"] = None  # the exported folder must not need the package
    import torch
    torch.set_num_threads(1)  # as the parent computed the expected outputs
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForSequenceClassification)
    path, ids_path, atol = sys.argv[1], sys.argv[2], float(sys.argv[3])
    expected = torch.load(ids_path)
    ids = expected["ids"]
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=True)
    lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    assert "mhc_lm" not in type(lm).__module__.split(".")[0], type(lm).__module__
    with torch.no_grad():
        logits = lm(ids).logits
        hidden = AutoModel.from_pretrained(path, trust_remote_code=True).eval()(ids).last_hidden_state
        prompt = ids[:, :4]
        cached = lm.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = lm.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
        torch.manual_seed(0)
        sampled = lm.generate(prompt, max_new_tokens=8, do_sample=True, top_k=20, temperature=0.9)
        cls = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, num_labels=3).eval()
        padded = torch.cat([ids[:, :6], torch.zeros(ids.shape[0], 3, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(ids.shape[0], 6), torch.zeros(ids.shape[0], 3)], dim=1).long()
        pooled_padded = cls(padded, attention_mask=mask).logits
        pooled_short = cls(ids[:, :6]).logits
    print(json.dumps({
        "residual_mode": cfg.residual_mode,
        "logits_equal": bool(torch.allclose(logits, expected["logits"], rtol=0, atol=atol)),
        "hidden_equal": bool(torch.allclose(hidden, expected["hidden"], rtol=0, atol=atol)),
        "cache_agrees": bool(torch.equal(cached, uncached)),
        "new_tokens": int(cached.shape[1] - prompt.shape[1]),
        "sampled_shape": list(sampled.shape),
        "cls_shape": list(pooled_padded.shape),
        "cls_pools_last_non_pad": bool(torch.allclose(pooled_padded, pooled_short, atol=1e-5)),
    }))
    """
)


@pytest.mark.parametrize("mode, overrides", [*((m, {}) for m in MODES), ("grid", {"block_norm": "post"})],
                         ids=[*MODES, "grid-post-norm"])
def test_roundtrip_in_fresh_process(mode, overrides, tmp_path):
    torch.manual_seed(0)
    model = MhcLmForCausalLM(tiny_config(mode, **overrides)).eval()
    with torch.no_grad():  # move off the init so the test sees real loading, not re-initialisation
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    src, dst = tmp_path / "export", tmp_path / "elsewhere" / "copy"
    model.save_pretrained(src)
    files = sorted(os.listdir(src))
    assert "model.safetensors" in files and "config.json" in files and "modeling_mhc_lm.py" in files
    auto_map = json.loads((src / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"} <= set(auto_map)
    shutil.copytree(src, dst)
    shutil.rmtree(src)

    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad(), one_thread():
        expected = {"ids": ids, "logits": model(ids).logits, "hidden": model.model(ids).last_hidden_state}
    torch.save(expected, tmp_path / "expected.pt")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", PYTHONPATH="", **ONE_THREAD_ENV)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(dst), str(tmp_path / "expected.pt"), str(RELOAD_ATOL)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "residual_mode": mode,
        "logits_equal": True,
        "hidden_equal": True,
        "cache_agrees": True,
        "new_tokens": 8,
        "sampled_shape": [2, 12],
        "cls_shape": [2, 3],
        "cls_pools_last_non_pad": True,
    }


def test_bf16_load_keeps_mixing_fp32(tmp_path):
    model = MhcLmForCausalLM(tiny_config("mhc"))
    model.save_pretrained(tmp_path)
    loaded = MhcLmForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in loaded.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    assert all(d == torch.float32 for name, d in dtypes.items() if "mixing" in name)
    ids = torch.randint(3, 97, (1, 6))
    assert torch.isfinite(loaded(ids).logits.float()).all()


def test_every_embedding_row_trains_including_the_pad_id():
    # pad_token_id defaults to 0, which is an ordinary token for tokenizers without a pad token:
    # its embedding row must get gradients when it occurs in the input
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    config = MhcLmConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0)
    model = MhcLmForCausalLM(config)
    ids = torch.tensor([[0, 3, 0, 5, 7, 0]])
    model(ids, labels=ids).loss.backward()
    assert model.model.embed_tokens.weight.grad[0].abs().sum() > 0
