"""The quickstart end to end at a few steps (prepares the embedded corpus: slow)."""

import json

import pytest


@pytest.mark.slow
def test_quickstart_few_steps(tmp_path):
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("quickstart", repo / "launch" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    out = tmp_path / "qs"
    assert quickstart.main(["logging.progress_bar=false", "train.eval_batches=1", "--out", str(out),
                            "--steps", "4", "--modes", "standard", "mhc"]) == 0
    assert (out / "loss_curves.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"standard", "mhc"}
    for mode in summary:
        assert (out / mode / "hf" / "model.safetensors").is_file()
        assert (out / mode / "hf" / "tokenizer.json").is_file()
