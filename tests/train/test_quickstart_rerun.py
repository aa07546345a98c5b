"""A no-op rerun of the quickstart keeps summary.json's wall_s of the run that trained (it used to
write the few tenths of a second the rerun took)."""

import importlib.util
import json
from pathlib import Path

import mhc_lm.data
import mhc_lm.train

ROOT = Path(__file__).resolve().parents[2]


def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart_rerun", ROOT / "launch" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FinishedTrainer:
    """Writes the metrics of a finished run when there are none, as a real Trainer would."""

    def __init__(self, cfg, callbacks=None):
        self.run_dir, self.steps = Path(cfg.run_dir), cfg.train.max_steps

    def fit(self):
        metrics = self.run_dir / "metrics.jsonl"
        if not metrics.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            metrics.write_text("".join(json.dumps({"step": s, "loss": 5.0 - s / 10, "tokens_per_s": 100.0}) + "\n"
                                       for s in range(1, self.steps + 1)) + json.dumps({"step": self.steps,
                                                                                        "val_loss": 4.0}) + "\n")
        return "completed"


def test_a_rerun_keeps_the_wall_time_of_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(mhc_lm.data, "prepare_data", lambda cfg: None)
    monkeypatch.setattr(mhc_lm.train, "Trainer", FinishedTrainer)
    qs, out = _quickstart(), tmp_path / "qs"
    args = [f"data.out_dir={tmp_path / 'data'}", "--out", str(out), "--steps", "3", "--modes", "standard", "hc"]
    assert qs.main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    # pretend the first run took long; the rerun trains nothing (every run finished) and must keep it
    first["standard"]["wall_s"], first["hc"]["wall_s"] = 123.4, 56.7
    (out / "summary.json").write_text(json.dumps(first))
    assert qs.main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert (again["standard"]["wall_s"], again["hc"]["wall_s"]) == (123.4, 56.7)
    # a run that is not finished (here: deleted) trains again and gets its new wall time
    (out / "hc" / "metrics.jsonl").unlink()
    assert qs.main(args) == 0
    third = json.loads((out / "summary.json").read_text())
    assert third["standard"]["wall_s"] == 123.4 and third["hc"]["wall_s"] != 56.7
