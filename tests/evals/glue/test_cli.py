"""Command line: comparison tables, errors that name the fix, resuming finished tasks."""

import json
import os
import subprocess
import sys

import pytest

from evals.glue.cli import main
from evals.glue.report import write_json_atomic


def _fake_results(out, name, mode, tasks: dict):
    """A results folder as `python -m evals.glue` writes it, with chosen metrics."""
    for task, metrics in tasks.items():
        score = sum(metrics.values()) / len(metrics)
        write_json_atomic(out / f"{task}.json", {"task": task, "protocol": "finetune", "metrics": metrics,
                                                 "score": score, "model": {"residual_mode": mode}})
    write_json_atomic(out / "summary.json", {"name": name, "model": {"residual_mode": mode}})


def test_compare_puts_models_side_by_side_with_the_glue_average(tmp_path):
    _fake_results(tmp_path / "a", "std", "standard", {"cola": {"mcc": 0.2}, "mrpc": {"accuracy": 0.6, "f1": 0.8},
                                                      "mnli": {"accuracy_m": 0.5, "accuracy_mm": 0.7}})
    _fake_results(tmp_path / "b", "mhc", "mhc", {"cola": {"mcc": 0.4}, "mnli": {"accuracy_m": 0.6,
                                                                                 "accuracy_mm": 0.6}})
    table_file = tmp_path / "cmp.md"
    rc = main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(table_file)])
    assert rc == 0
    lines = table_file.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header == ("| model | mode | protocol | CoLA | MRPC acc | MRPC F1 | MNLI-m | MNLI-mm | GLUE avg |")
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| std") or line.startswith("| mhc")}
    # GLUE avg over the tasks both have (CoLA, MNLI): (0.2 + 0.6) / 2 and (0.4 + 0.6) / 2
    assert rows["| std"] == "| std | standard | finetune | 20.0 | 60.0 | 80.0 | 50.0 | 70.0 | 40.0 |"
    assert rows["| mhc"] == "| mhc | mhc | finetune | 40.0 | - | - | 60.0 | 60.0 | 50.0 |"
    assert "2 task(s) every model has (CoLA, MNLI)" in table_file.read_text()


def test_compare_runs_as_a_module(tmp_path):
    _fake_results(tmp_path / "r", "r", "grid", {"rte": {"accuracy": 0.625}})
    proc = subprocess.run([sys.executable, "-m", "evals.glue", "--compare", str(tmp_path / "r")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| r | grid | finetune | 62.5 | 62.5 |" in proc.stdout


def test_compare_of_a_folder_without_results_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--compare", str(tmp_path / "empty")]) == 2
    assert "no <task>.json results" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_missing_task_file_names_the_expected_path(tiny_models, tmp_path, capsys):
    (tmp_path / "data" / "RTE").mkdir(parents=True)
    rc = main(["--model", str(tiny_models["standard"]), "--tasks", "rte", "--protocol", "zeroshot",
               "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert f"expected {tmp_path / 'data' / 'RTE' / 'dev.tsv'}" in capsys.readouterr().err


def test_bad_model_paths(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--tasks", "rte", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert main(["--model", str(tmp_path / "run"), "--tasks", "rte", "--out", str(tmp_path / "o")]) == 2
    assert "launch/export_hf.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tasks", "rte"])  # neither --model/--out nor --compare


def test_finished_tasks_are_skipped_unless_overwrite(tiny_models, fixtures_dir, tmp_path, capsys):
    args = ["--model", str(tiny_models["mhc"]), "--tasks", "wnli", "--protocol", "zeroshot",
            "--data-dir", str(fixtures_dir), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 0
    first = json.loads((tmp_path / "o" / "wnli.json").read_text())
    capsys.readouterr()
    assert main(args) == 0
    assert "already in" in capsys.readouterr().out
    # other settings (here the zero-shot batch size, or other data / seeds / hyperparameters): redone
    assert main(args + ["zeroshot.batch_size=3"]) == 0
    assert "already in" not in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "wnli.json").read_text())["settings"]["zeroshot"]["batch_size"] == 3
    assert main(args + ["--overwrite"]) == 0
    again = json.loads((tmp_path / "o" / "wnli.json").read_text())
    assert again["samples"] == first["samples"]  # deterministic scoring
    assert not list((tmp_path / "o").glob(".*tmp"))  # atomic writes leave no temp files


@pytest.mark.slow
def test_two_cpu_processes_finetune(tiny_models, fixtures_dir, tmp_path):
    """Data-parallel fine-tuning through `accelerate launch` (gloo on CPU): the whole dev set, once."""
    out = tmp_path / "ddp"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "evals.glue",
           "--model", str(tiny_models["mhc"]), "--tasks", "rte,mnli", "--data-dir", str(fixtures_dir),
           "--out", str(out), "--no-progress", "finetune.max_steps=4", "finetune.eval_every=2",
           "finetune.batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rte = json.loads((out / "rte.json").read_text())
    assert rte["n_dev"] == {"validation": 4} and [h["step"] for h in rte["per_seed"][0]["history"]] == [2, 4]
    # one schedule step per optimizer step whatever the process count: lr of step s = lr0 (4 - (s-1)) / 4
    lr0 = rte["hyperparameters"]["learning_rate"]
    assert [h["lr"] for h in rte["per_seed"][0]["history"]] == pytest.approx([lr0 * 3 / 4, lr0 * 1 / 4])
    mnli = json.loads((out / "mnli.json").read_text())
    assert mnli["n_dev"] == {"validation_matched": 3, "validation_mismatched": 4}
