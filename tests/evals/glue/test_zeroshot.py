"""Zero-shot scoring: lm-evaluation-harness tokenisation, exact log-likelihoods, every residual mode."""

import json

import pytest
import torch

from evals.glue.cli import main
from evals.glue.data import load_split
from evals.glue.model_io import load_causal_lm, load_tokenizer, resolve_model_dir
from evals.glue.tasks import get_task
from evals.glue.zeroshot import encode_pair, score_requests, zeroshot_split

from .conftest import MODES


def test_encode_pair_moves_trailing_spaces_and_splits_the_whole_encoding(glue_tokenizer):
    ctx, cont = encode_pair(glue_tokenizer, "The movie was great.\nAnswer: ", "yes")
    whole = glue_tokenizer.encode("The movie was great.\nAnswer: yes")
    assert ctx + cont == whole
    assert ctx == glue_tokenizer.encode("The movie was great.\nAnswer:")
    assert glue_tokenizer.decode(cont) == " yes"


def test_scores_equal_unbatched_log_probabilities(tiny_models):
    """Batched, padded, length-sorted scoring == summing log p token by token on one sequence."""
    model_dir = resolve_model_dir(tiny_models["mhc"])
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    texts = [("A short one.\nAnswer:", " no"), ("A much longer context sentence here.\nAnswer:", " positive"),
             ("x", " True, False")]
    requests = [encode_pair(tok, c, k) for c, k in texts]
    batched = score_requests(model, requests, max_length=256, batch_size=3, pad_token_id=tok.pad_token_id,
                             progress=False)
    for (ctx, cont), got in zip(requests, batched):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        expected = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert got == pytest.approx(expected, abs=1e-4)
    # left truncation keeps the continuation and the last tokens of the context
    ctx, cont = requests[1]
    short = score_requests(model, [(ctx, cont)], max_length=len(cont) + 2, progress=False)[0]
    assert short == pytest.approx(score_requests(model, [(ctx[-3:], cont)], 256, progress=False)[0], abs=1e-4)


def test_prediction_is_the_most_likely_choice(tiny_models, fixtures_dir):
    model_dir = resolve_model_dir(tiny_models["standard"])
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    spec = get_task("sst2")
    res = zeroshot_split(model, tok, spec, load_split(spec, "validation", fixtures_dir), 256, 4, progress=False)
    assert len(res["loglikelihoods"]) == 8 and all(len(r) == 2 for r in res["loglikelihoods"])
    assert res["predictions"] == [int(r[1] > r[0]) for r in res["loglikelihoods"]]
    assert res["metrics"]["accuracy"] == sum(p == y for p, y in zip(res["predictions"], res["labels"])) / 8


@pytest.mark.parametrize("mode", MODES)
def test_zeroshot_cli_every_mode(mode, tiny_models, fixtures_dir, tmp_path, capsys):
    out = tmp_path / mode
    rc = main(["--model", str(tiny_models[mode]), "--tasks", "rte,mnli,stsb", "--protocol", "zeroshot",
               "--data-dir", str(fixtures_dir), "--out", str(out), "--no-progress"])
    assert rc == 0
    rte = json.loads((out / "rte.json").read_text())
    assert rte["protocol"] == "zeroshot" and rte["model"]["residual_mode"] == mode
    assert rte["model"]["path"].endswith("hf")  # a run dir is evaluated through its hf/ export
    assert set(rte["metrics"]) == {"accuracy"} and 0 <= rte["score"] <= 1 and rte["n_dev"] == {"validation": 4}
    mnli = json.loads((out / "mnli.json").read_text())
    assert set(mnli["metrics"]) == {"accuracy_m", "accuracy_mm"}
    assert not (out / "stsb.json").exists()  # no lm-evaluation-harness prompt for STS-B
    summary = json.loads((out / "summary.json").read_text())
    assert summary["glue_average"] == pytest.approx((rte["score"] + mnli["score"]) / 2)
    assert "STS-B" not in (out / "results.md").read_text() and "MNLI-mm" in (out / "results.md").read_text()
    assert "stsb: skipped" in capsys.readouterr().out
