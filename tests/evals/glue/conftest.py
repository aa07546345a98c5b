"""Tiny exported models (every residual mode) and a tokenizer trained on the GLUE fixtures.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the fixture text in a second,
wrapped as PreTrainedTokenizerFast and saved next to a randomly initialised MhcLmForCausalLM,
the layout of an exported run (`RUN_DIR/hf`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "glue"
MODES = ("standard", "hc", "mhc", "grid")


def _train_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(encoding="utf-8-sig") for p in sorted(FIXTURES.rglob("*.tsv"))]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def glue_tokenizer():
    return _train_tokenizer()


def save_tiny_model(out_dir: Path, tokenizer, mode: str = "standard", seed: int = 0, **overrides) -> Path:
    import torch

    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  residual_mode=mode, n_streams=4, grid_size=2, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    kwargs.update(overrides)
    model = MhcLmForCausalLM(MhcLmConfig(**kwargs))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, glue_tokenizer) -> dict[str, Path]:
    """residual mode -> run dir whose hf/ holds the exported tiny model."""
    root = tmp_path_factory.mktemp("glue_models")
    return {m: save_tiny_model(root / m / "hf", glue_tokenizer, m).parent for m in MODES}


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
