"""Find and load the model under evaluation: an exported HF folder or a training run directory.

A run directory (`config.yaml`, `checkpoints/`, `hf/`) is evaluated through its `hf/` export;
any folder with a `config.json` (remote code via `auto_map`) loads with `trust_remote_code`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mhc_lm.run_dir import RunDir, RunDirError


def resolve_model_dir(path: str | Path) -> Path:
    """The folder to load: a run directory's hf/ export, else `path` itself when it holds a config.json."""
    path = Path(path)
    run = RunDir(path)
    if run.has_export():
        return run.export_path
    if (path / "config.json").is_file():
        return path
    if not path.exists():
        raise RunDirError(f"--model {path} does not exist")
    if run.checkpoints_path.is_dir():
        raise RunDirError(f"--model {path} is a run directory without an hf/ export; run "
                          f"`python launch/export_hf.py {path}` first")
    raise RunDirError(f"--model {path}: no config.json (an exported Hugging Face folder) and no "
                      f"hf/config.json (a training run directory)")


def model_info(model_dir: Path) -> dict:
    """What the report says about the model: path and the residual-mode fields of config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    keys = ("residual_mode", "n_streams", "grid_size", "hidden_size", "num_hidden_layers", "vocab_size")
    return {"path": str(model_dir), **{k: cfg[k] for k in keys if k in cfg}}


def load_tokenizer(model_dir: Path):
    """The folder's tokenizer, with a pad token (EOS when the tokenizer defines none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    except (OSError, ValueError) as err:
        raise RunDirError(f"{model_dir}: no loadable tokenizer ({err}); export the model together with "
                          f"its tokenizer (launch/export_hf.py does)") from err
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise RunDirError(f"{model_dir}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_classifier(model_dir: Path, num_labels: int, pad_token_id: int):
    """Sequence classifier from the (causal-LM) weights; the new `score` head is initialised fresh."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is the expected message here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, trust_remote_code=True, num_labels=num_labels, pad_token_id=pad_token_id)
    finally:
        hf_logging.set_verbosity(verbosity)
    if num_labels == 1:
        model.config.problem_type = "regression"
    else:
        model.config.problem_type = "single_label_classification"
    return model


def load_causal_lm(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
