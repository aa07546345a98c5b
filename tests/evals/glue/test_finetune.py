"""Fine-tuning protocol: end to end on the quickstart's tiny model, early stopping, seeds, regression."""

import json
import math
import time

import pytest
import yaml

from evals.glue.cli import main
from evals.glue.config import FinetuneConfig
from evals.glue.finetune import encode_example, finetune_task_seed
from evals.glue.model_io import load_tokenizer, resolve_model_dir
from evals.glue.tasks import get_task

from .conftest import MODES, save_tiny_model

REPO = __import__("pathlib").Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory, glue_tokenizer):
    """configs/model/tiny.yaml (the quickstart model, ~0.9 M parameters with this vocabulary), mHC."""
    preset = yaml.safe_load((REPO / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(vocab_size=len(glue_tokenizer), residual_mode="mhc")
    return save_tiny_model(tmp_path_factory.mktemp("quickstart") / "hf", glue_tokenizer, **preset)


def test_finetune_quickstart_model_end_to_end(quickstart_model, fixtures_dir, tmp_path, capsys):
    t0 = time.time()
    out = tmp_path / "mhc_ft"
    rc = main(["--model", str(quickstart_model), "--tasks", "sst2", "--protocol", "finetune",
               "--data-dir", str(fixtures_dir), "--out", str(out), "--no-progress",
               "finetune.learning_rate=1.0e-3", "finetune.batch_size=8", "tasks.sst2.num_epochs=4"])
    elapsed = time.time() - t0
    assert rc == 0
    res = json.loads((out / "sst2.json").read_text())
    run = res["per_seed"][0]
    assert res["protocol"] == "finetune" and res["model"]["residual_mode"] == "mhc"
    assert run["steps"] == 12 and [h["step"] for h in run["history"]] == [3, 6, 9, 12]  # 24 rows / 8, per epoch
    assert res["n_train"] == 24 and res["n_dev"] == {"validation": 8}
    assert all(math.isfinite(h["train_loss"]) for h in run["history"])
    # linear decay to 0 over the 12 optimizer steps (warmup int(0.06 * 12) = 0): lr of step s is 1e-3 (12 - (s-1)) / 12
    assert [h["lr"] for h in run["history"]] == pytest.approx([1e-3 * (13 - s) / 12 for s in (3, 6, 9, 12)])
    assert res["metrics"]["accuracy"] == max(h["metrics"]["accuracy"] for h in run["history"])  # best dev eval
    assert res["hyperparameters"]["learning_rate"] == 1.0e-3
    assert "sst2 (finetune): accuracy" in capsys.readouterr().out
    with capsys.disabled():
        print(f"\n[glue] quickstart tiny mHC model, SST-2 fixture fine-tune: dev accuracy "
              f"{res['metrics']['accuracy']:.3f} in {elapsed:.1f}s")
    assert elapsed < 60


def test_early_stopping_on_a_flat_dev_score(tiny_models, fixtures_dir, accelerator):
    model_dir = resolve_model_dir(tiny_models["standard"])
    hp = FinetuneConfig(learning_rate=1e-12, batch_size=4, max_steps=20, eval_every=1, patience=2,
                        warmup_ratio=0.0)
    run = finetune_task_seed(get_task("rte"), model_dir, load_tokenizer(model_dir), hp, 0, accelerator,
                             fixtures_dir, progress=False)
    assert run["stopped_early"] and run["steps"] == 3 and run["best_step"] == 1
    assert [h["step"] for h in run["history"]] == [1, 2, 3]


def test_same_seed_same_run_other_seed_other_run(tiny_models, fixtures_dir, accelerator):
    model_dir = resolve_model_dir(tiny_models["hc"])
    tok = load_tokenizer(model_dir)
    hp = FinetuneConfig(learning_rate=1e-3, batch_size=4, max_steps=2, eval_every=1, max_seq_len=24,
                        max_eval_samples=3)
    a, b, c = (finetune_task_seed(get_task("cola"), model_dir, tok, hp, s, accelerator, fixtures_dir, False)
               for s in (0, 0, 1))
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["metrics"] == b["metrics"]
    assert [h["train_loss"] for h in a["history"]] != [h["train_loss"] for h in c["history"]]


def test_stsb_is_regression(tiny_models, fixtures_dir, tmp_path):
    out = tmp_path / "stsb"
    rc = main(["--model", str(tiny_models["grid"]), "--tasks", "stsb", "--data-dir", str(fixtures_dir),
               "--out", str(out), "--no-progress", "--seeds", "0,1", "finetune.max_steps=2",
               "finetune.batch_size=4"])
    assert rc == 0
    res = json.loads((out / "stsb.json").read_text())
    assert set(res["metrics"]) == {"pearson", "spearman"} and res["seeds"] == [0, 1]
    assert all(-1 <= v <= 1 for v in res["metrics"].values())
    assert res["metrics"]["pearson"] == pytest.approx(sum(r["metrics"]["pearson"] for r in res["per_seed"]) / 2)


@pytest.mark.parametrize("mode", MODES)
def test_finetune_every_mode(mode, tiny_models, fixtures_dir, accelerator):
    model_dir = resolve_model_dir(tiny_models[mode])
    hp = FinetuneConfig(learning_rate=1e-3, batch_size=2, max_steps=2, max_seq_len=24, max_eval_samples=2)
    run = finetune_task_seed(get_task("mnli"), model_dir, load_tokenizer(model_dir), hp, 0, accelerator,
                             fixtures_dir, progress=False)
    assert set(run["metrics"]) == {"accuracy_m", "accuracy_mm"} and run["steps"] == 2
    assert run["n_dev"] == {"validation_matched": 2, "validation_mismatched": 2}


def test_encode_example_truncates_the_longer_text(glue_tokenizer):
    eos = glue_tokenizer.eos_token_id
    a, b = "a very long first sentence with many many words in it .", "short ."
    b_ids = glue_tokenizer.encode(b, add_special_tokens=False)
    max_len = len(b_ids) + 2 + len(b_ids) + 1  # room for b, two eos, and a cut to just above b's length
    ids = encode_example(glue_tokenizer, [a, b], max_len=max_len)
    assert len(ids) == max_len and ids[-1] == eos and ids.count(eos) == 2
    assert ids[-len(b_ids) - 1:-1] == b_ids  # the short text survives whole
    assert ids[:len(b_ids) + 1] == glue_tokenizer.encode(a)[:len(b_ids) + 1]  # the long one lost its end
    full = encode_example(glue_tokenizer, [b], max_len=64)
    assert full == glue_tokenizer.encode(b) + [eos]


@pytest.mark.gpu
def test_finetune_bf16_on_gpu(tiny_models, fixtures_dir, tmp_path):
    out = tmp_path / "gpu"
    rc = main(["--model", str(tiny_models["mhc"]), "--tasks", "rte,stsb", "--data-dir", str(fixtures_dir),
               "--out", str(out), "--no-progress", "mixed_precision=bf16", "finetune.max_steps=3",
               "finetune.batch_size=4"])
    assert rc == 0
    for task in ("rte", "stsb"):
        res = json.loads((out / f"{task}.json").read_text())
        assert all(math.isfinite(h["train_loss"]) for h in res["per_seed"][0]["history"])


def test_batched_split_encoding_equals_one_by_one(glue_tokenizer, fixtures_dir):
    from evals.glue.data import load_split
    from evals.glue.finetune import encode_split

    spec = get_task("mrpc")
    ds = load_split(spec, "train", fixtures_dir)
    batched = encode_split(glue_tokenizer, spec, ds, max_len=40, chunk=4)
    single = [encode_example(glue_tokenizer, [r["sentence1"], r["sentence2"]], 40) for r in ds]
    assert [b["input_ids"] for b in batched] == single and [b["label"] for b in batched] == ds["label"]
