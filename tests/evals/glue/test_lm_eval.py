"""lm-evaluation-harness runs offline on local GLUE task files and agrees with our zero-shot scores.

Skipped when `lm-eval` is not installed. lm-evaluation-harness is run in-process on task YAMLs
written by `evals.glue.lm_eval_tasks` (the same as `lm_eval --include_path DIR`), against the
exported tiny model loaded with trust_remote_code, and its per-example log-likelihoods must
equal those of `python -m evals.glue --protocol zeroshot`.
"""

import json

import pytest

from evals.glue.cli import main
from evals.glue.lm_eval_tasks import write_lm_eval_tasks
from evals.glue.tasks import parse_tasks


def test_lm_eval_offline_on_local_tasks_matches_our_zeroshot(tiny_models, fixtures_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = write_lm_eval_tasks(tmp_path / "tasks", parse_tasks("mrpc,mnli"), fixtures_dir)
    assert names == ["glue_local_mrpc", "glue_local_mnli", "glue_local_mnli_mismatch"]
    model_dir = tiny_models["mhc"] / "hf"
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
        tasks=["glue_local"], task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        device="cpu", batch_size=4, log_samples=True, bootstrap_iters=0)

    out = tmp_path / "ours"
    assert main(["--model", str(model_dir), "--tasks", "mrpc,mnli", "--protocol", "zeroshot",
                 "--data-dir", str(fixtures_dir), "--out", str(out), "--no-progress"]) == 0
    mrpc, mnli = (json.loads((out / f"{t}.json").read_text()) for t in ("mrpc", "mnli"))
    ours = {"glue_local_mrpc": mrpc["samples"]["validation"],
            "glue_local_mnli": mnli["samples"]["validation_matched"],
            "glue_local_mnli_mismatch": mnli["samples"]["validation_mismatched"]}
    for name, samples in ours.items():
        theirs = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        assert len(theirs) == len(samples)
        for t, o in zip(theirs, samples):
            assert [float(r[0]) for r in t["filtered_resps"]] == pytest.approx(o["loglikelihoods"], abs=1e-4)
            assert t["target"] == o["label"]
    assert results["results"]["glue_local_mrpc"]["acc,none"] == pytest.approx(mrpc["metrics"]["accuracy"])
    assert results["results"]["glue_local_mrpc"]["f1,none"] == pytest.approx(mrpc["metrics"]["f1"])
    assert results["results"]["glue_local_mnli_mismatch"]["acc,none"] == pytest.approx(mnli["metrics"]["accuracy_mm"])
