"""RunDir: one reading of the run directory for every reader, the DIVERGED record, RunDirError."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import yaml

from evals import stability_study
from evals.comparison.load import load_run
from mhc_lm.run_dir import DEFAULT_SEED, Divergence, RunDir, RunDirError
from mhc_lm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def make_run(path: Path, config: dict | None, lines=({"step": 1, "loss": 2.0},)) -> RunDir:
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return RunDir(path)


def test_divergence_record_round_trips_with_non_finite_values(tmp_path):
    run = make_run(tmp_path / "r", {"model": {"residual_mode": "mhc"}})
    assert run.divergence() is None
    record = Divergence.at(7, float("nan"), float("inf"), tmp_path / "r" / "checkpoints" / "step_0000004", "boom")
    run.write_divergence(record)
    stored = json.loads(run.diverged_path.read_text())  # machine-readable: strict JSON
    assert stored["step"] == 7 and stored["reason"] == "loss" and stored["loss"] == "nan"
    back = run.divergence()
    assert (back.step, back.reason, back.message, back.last_checkpoint) == (7, "loss", "boom", record.last_checkpoint)
    assert math.isnan(back.loss) and back.grad_norm == math.inf
    assert Divergence.at(3, 1.5, float("nan")).reason == "grad_norm"  # finite loss: the norm was the problem
    assert run.clear_divergence().to_json() == back.to_json()  # nan != nan: compare the stored form
    assert run.divergence() is None and not run.diverged_path.exists()


@pytest.mark.parametrize("text, step", [
    ("non-finite loss/grad norm at step 6 (loss=nan, grad_norm=nan); stopping without saving.\n", 6),
    ("non-finite loss at step 290; last good checkpoint step_200", 290),
    ("diverged\n", None),
    ("", None),
])
def test_plain_text_diverged_notes_of_older_runs_still_read(tmp_path, text, step):
    run = make_run(tmp_path / "r", {"model": {"residual_mode": "hc"}})
    run.diverged_path.write_text(text)
    record = run.divergence()
    assert record.step == step and record.message == text.strip() and record.reason == ""


def test_both_study_readers_take_the_seed_and_divergence_from_one_rule(tmp_path):
    """A config.yaml without train.seed: the comparison used to say seed 0, the stability study raised
    KeyError; a plain-text note's step was parsed by the study alone."""
    assert DEFAULT_SEED == TrainConfig().seed
    for name, config in (("noseed", {"model": {"residual_mode": "hc"}}),
                         ("seeded", {"model": {"residual_mode": "hc"}, "train": {"seed": 5, "max_steps": 3}})):
        run = make_run(tmp_path / name, config)
        run.diverged_path.write_text("non-finite loss at step 1\n")
        compared, studied = load_run(run.path), stability_study.load(run.path)
        assert compared.seed == studied["seed"] == run.seed() == config.get("train", {}).get("seed", DEFAULT_SEED)
        assert compared.diverged == studied["diverged"] == "non-finite loss at step 1" and studied["diverged_at"] == 1


def test_mode_from_config_or_export_and_clear_errors(tmp_path):
    run = make_run(tmp_path / "r", None)
    with pytest.raises(RunDirError, match="residual mode unknown"):
        run.mode()
    (run.export_path).mkdir()
    (run.export_path / "config.json").write_text(json.dumps({"residual_mode": "grid"}))
    assert run.mode() == "grid" and run.model_dir() == run.export_path
    run.config_path.write_text("model: {residual_mode: mhc}\ntrain: {seed: two}\n")
    assert run.mode() == "mhc"  # config.yaml first
    with pytest.raises(RunDirError, match=r"train.seed is 'two', not an integer"):
        run.seed()
    run.config_path.write_text("model: [unclosed\n")
    with pytest.raises(RunDirError, match="config.yaml: not valid YAML") as err:
        run.config()
    assert "\n" not in str(err.value)
    with pytest.raises(RunDirError, match="no exported model"):
        RunDir(tmp_path / "other").model_dir()


def test_metrics_records_torn_lines_and_empty_logs(tmp_path):
    with pytest.raises(RunDirError, match="no metrics.jsonl"):
        RunDir(tmp_path).metrics()
    run = make_run(tmp_path / "r", {}, lines=({"step": 1, "loss": "nan"}, {"val_loss": 1.0}))
    with run.metrics_path.open("a") as fh:
        fh.write('{"step": 2, "lo')
    bad = []
    records = run.metrics(on_bad=lambda i, line: bad.append(i))
    assert len(records) == 1 and math.isnan(records[0]["loss"]) and bad == [3]
    run.metrics_path.write_text('{"loss": 1.0}\n')
    with pytest.raises(RunDirError, match="no readable metrics records"):
        run.metrics()


def test_a_command_turns_a_run_dir_error_into_one_line_and_status_2(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert stability_study.main(["stress", str(tmp_path / "notarun")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no metrics.jsonl" in err


def _raises_system_exit_outside_main_guard(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    guarded = set()
    for node in tree.body:  # `if __name__ == "__main__": raise SystemExit(main())` is the command itself
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            guarded.update(id(n) for n in ast.walk(node))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise) and node.exc is not None
            and "SystemExit" in ast.unparse(node.exc) and id(node) not in guarded]


def test_library_code_raises_errors_not_system_exit():
    """Under mhc_lm/ and evals/ only a command's `__main__` guard exits; everything else raises a
    typed error (RunDirError, ConfigError, ...) that main() turns into a status."""
    found = {str(p.relative_to(REPO)): lines for root in ("mhc_lm", "evals") for p in sorted((REPO / root).rglob("*.py"))
             if (lines := _raises_system_exit_outside_main_guard(p))}
    assert found == {}
