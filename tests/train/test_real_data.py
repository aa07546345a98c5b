"""End to end through mhc_lm.data: prepare a small text corpus, train a few steps, export with
the tokenizer, reload with the Auto classes."""

import torch

from mhc_lm.train import Trainer
from tests.train.helpers import TINY_MODEL, tiny_config

TEXT = ("The committee met on Tuesday to discuss the budget. Members agreed that the proposal needed "
        "more work, and the chair asked for a revised draft by Friday. ")


def test_train_on_prepared_corpus_and_export(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join('{"text": "%s"}\n' % (TEXT * (1 + i % 3) + f"Document {i}.") for i in range(120)))
    data = {"train_files": [str(docs)], "vocab_size": 320, "seq_len": 16, "val_fraction": 0.1,
            "out_dir": str(tmp_path / "prepared"), "num_proc": 1}
    cfg = tiny_config(tmp_path / "run", "hc", data=data, train={"max_steps": 3, "export_hf": True},
                      model={"vocab_size": 320})
    trainer = Trainer(cfg)
    assert trainer.data.tokenizer is not None and trainer.probe_batch is not None
    assert trainer.fit() == "completed"
    hf = tmp_path / "run" / "hf"
    tok = AutoTokenizer.from_pretrained(hf, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True)
    ids = tok("The committee met", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trainer.unwrapped_model(ids).logits)
    assert model.config.eos_token_id == tok.eos_token_id
    assert (tmp_path / "run" / "tokenizer").is_dir()


def test_model_vocab_must_cover_the_tokenizer(tmp_path):
    import pytest

    docs = tmp_path / "docs.txt"
    docs.write_text(TEXT * 200)
    data = {"train_files": [str(docs)], "vocab_size": 320, "seq_len": 16, "val_fraction": 0.0,
            "out_dir": str(tmp_path / "prepared"), "num_proc": 1, "txt_sample_by": "line"}
    cfg = tiny_config(tmp_path / "run", data=data, model={"vocab_size": TINY_MODEL["vocab_size"]})
    match = "model.vocab_size=256 is smaller than the vocabulary of the tokenizer and data in .*set model.vocab_size=320"
    with pytest.raises(ValueError, match=match):
        Trainer(cfg)
