"""Every h_res_map through save_pretrained -> AutoModelForCausalLM.from_pretrained(trust_remote_code)
in one fresh process where `mhc_lm` cannot be imported (the exported folder must carry h_res_maps.py):
same logits, and generate with the KV cache gives the logits of a full forward."""

import json
import subprocess
import sys
import textwrap

import torch

from mhc_lm.model import MhcLmForCausalLM
from mhc_lm.model.h_res_maps import H_RES_MAPS

from .helpers import ONE_THREAD_ENV, RELOAD_ATOL, one_thread, perturbed, tiny_config

CHILD = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["mhc_lm"] = None  # the exported folder must not need the package
    import torch
    torch.set_num_threads(1)  # as the parent computed the expected logits
    from transformers import AutoModelForCausalLM
    root, atol = sys.argv[1], float(sys.argv[2])
    result = {}
    for name in sorted(n for n in os.listdir(root) if n != "hf_home"):
        path = os.path.join(root, name)
        expected = torch.load(os.path.join(path, "expected.pt"))
        lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        mixing = lm.model.mixing_modules()[0]
        with torch.no_grad():
            logits = lm(expected["ids"]).logits
            out = lm.generate(expected["ids"][:, :4], max_new_tokens=5, do_sample=False, use_cache=True,
                              output_logits=True, return_dict_in_generate=True, pad_token_id=0)
            full = lm(out.sequences, use_cache=False).logits
        cache_err = max((s - full[:, 3 + i]).abs().max().item() for i, s in enumerate(out.logits))
        result[name] = {"map": lm.config.h_res_map, "map_class": type(mixing.h_res_map).__name__,
                        "module": type(lm).__module__.split(".")[0],
                        "logits_equal": bool(torch.allclose(logits, expected["logits"], rtol=0, atol=atol)),
                        "cache_err_small": cache_err < 1e-4, "new_tokens": len(out.logits)}
    print(json.dumps(result))
    """
)


def test_every_map_round_trips_and_generates_with_the_cache(tmp_path):
    ids = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    with one_thread():
        save_every_map(tmp_path, ids)
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "PATH": "/usr/bin:/bin",
           **ONE_THREAD_ENV}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(RELOAD_ATOL)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    classes = {m: type(H_RES_MAPS[m]).__name__ for m in H_RES_MAPS}
    assert result == {m: {"map": m, "map_class": classes[m], "module": "transformers_modules",
                          "logits_equal": True, "cache_err_small": True, "new_tokens": 5} for m in H_RES_MAPS}


def save_every_map(tmp_path, ids):
    for name in H_RES_MAPS:
        torch.manual_seed(0)
        # off the init: loading must restore it (orthogonal's phi_res = 0 included)
        model = perturbed(MhcLmForCausalLM(tiny_config("mhc", h_res_map=name, num_hidden_layers=2)).eval())
        model.save_pretrained(tmp_path / name)
        assert (tmp_path / name / "h_res_maps.py").is_file()
        with torch.no_grad():
            torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / name / "expected.pt")
