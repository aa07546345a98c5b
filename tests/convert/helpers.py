"""Tiny randomly initialised Llama folders (weights, config, tokenizer) written to disk, and the
CLI run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from launch.convert import main as convert_main

WORDS = ["the", "a", "model", "stream", "residual", "mix", "token", "layer", "norm", "head"]


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer (ids 0..vocab_size-1: 4 specials, the words, filler) saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in WORDS + [f"w{i}" for i in range(vocab_size)]:
        if len(vocab) < vocab_size:
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))


def llama_folder(folder: Path, seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """save_pretrained of a random LlamaForCausalLM (tiny by default) + tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
    with torch.no_grad():  # norms away from 1, so a dropped or misplaced norm weight shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder))
    if tokenizer:
        save_tokenizer(folder, kwargs["vocab_size"])
    return Path(folder)


def edit_config(folder: Path, **changes) -> None:
    path = Path(folder) / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def token_ids(vocab_size: int, seed: int = 1, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def convert(*argv) -> int:
    return convert_main([str(a) for a in argv])
