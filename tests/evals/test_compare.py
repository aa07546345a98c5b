"""evals.compare on synthetic run directories whose numbers are known."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from evals.compare import compare, main
from mhc_lm.config_utils import ConfigError
from mhc_lm.run_dir import RunDirError

REPO = Path(__file__).resolve().parents[2]
STEPS = 300


def loss_curve(seed: int, spikes=()):
    rng = np.random.default_rng(seed)
    loss = 6.0 - np.linspace(0, 1, STEPS) + rng.normal(0, 0.01, STEPS)
    for s in spikes:
        loss[s] += 2.0
    return loss


def write_run(root: Path, name: str, mode: str, seed: int, with_probes: bool, spikes=(), mode_in="config") -> dict:
    """A run dir with known numbers; returns the expected per-run values."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"model": {"residual_mode": mode}, "train": {"seed": seed}, "metrics": {"spike_window": 128}}
    if mode_in == "hf":
        del cfg["model"]["residual_mode"]
        (run / "hf").mkdir()
        (run / "hf" / "config.json").write_text(json.dumps({"residual_mode": mode}))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    loss = loss_curve(seed, spikes)
    tps = 1000.0 + 10 * seed + np.arange(STEPS) % 7
    amax_f = {50: 2.0 + seed, 100: 5.0 + seed, 150: 3.0, 200: 4.0, 250: 1.5, 300: 1.2}
    vanished = [0.5 + 0.01 * seed, 0.2, 0.1, 0.05]
    lines = []
    for i in range(STEPS):
        step = i + 1
        rec = {"step": step, "loss": float(loss[i]), "lr": 1e-3, "grad_norm": 1.0 + 0.01 * (i % 3),
               "tokens_per_s": float(tps[i]), "tokens": step * 1024}
        if with_probes:
            rec["spike/loss_count"] = float(2 + seed if step > 200 else 0)
            rec["spike/loss_score"] = float(1.5 if step > 200 else 0)
            rec["spike/grad_norm_count"] = 1.0
            if step in amax_f:
                rec.update({"amax/fwd/composite": amax_f[step], "amax/bwd/composite": 2 * amax_f[step],
                            "grad_std": 1e-3 * (1 + seed)})
                rec.update({f"vanished/{e}": v * (step / 300) for e, v in zip(["1e-04", "1e-05", "1e-06", "1e-07"], vanished)})
        lines.append(rec)
        if step % 100 == 0:
            lines.append({"step": step, "val_loss": 5.0 + seed * 0.1 + 100.0 / step})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    expected = {"final_train_loss": float(loss[-10:].mean()), "final_val_loss": 5.0 + seed * 0.1 + 100.0 / 300,
                "tokens_per_s": float(np.median(tps))}
    if with_probes:
        expected.update(loss_spikes=2 + seed, spike_score=1.5, grad_norm_spikes=1.0, max_amax_fwd=5.0 + seed,
                        max_amax_bwd=2 * (5.0 + seed), grad_std=1e-3 * (1 + seed))
        expected.update({f"vanished/{e}": v for e, v in zip(["1e-04", "1e-05", "1e-06", "1e-07"], vanished)})
    else:
        expected.update(loss_spikes=len(spikes), grad_norm_spikes=0.0, spike_score=100 * len(spikes) / (STEPS - 128))  # rule applied once the 128-step window is full
    return expected


@pytest.fixture
def runs(tmp_path):
    exp = {
        ("mhc", 0): write_run(tmp_path, "mhc_s0", "mhc", 0, True),
        ("mhc", 1): write_run(tmp_path, "mhc_s1", "mhc", 1, True),
        ("standard", 0): write_run(tmp_path, "std_s0", "standard", 0, False, spikes=(150, 260)),
        ("standard", 1): write_run(tmp_path, "std_s1", "standard", 1, False, spikes=(150, 260), mode_in="hf"),
    }
    return tmp_path, exp


def test_summary_matches_logs(runs):
    root, exp = runs
    out = root / "report"
    summary = compare(sorted(p for p in root.iterdir() if p.is_dir()), out)
    assert list(summary) == ["standard", "mhc"]  # grouped and ordered by mode
    for (mode, seed), values in exp.items():
        row = summary[mode]
        assert row["seeds"] == [0, 1]
        for key, value in values.items():
            assert row[key]["values"][seed] == pytest.approx(value, rel=1e-9), (mode, seed, key)
    mean = summary["mhc"]["max_amax_fwd"]
    assert mean["mean"] == pytest.approx(5.5) and mean["std"] == pytest.approx(np.std([5.0, 6.0], ddof=1))
    assert np.isnan(summary["standard"]["max_amax_fwd"]["mean"])  # not logged, no stability.json


def md_table(md: str, heading: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {first cell: cells}) of the first markdown table after `heading` (None: the first table)."""
    lines = md.splitlines()
    start = lines.index(heading) if heading else 0
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("| "))
    block = []
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.split("|")[1:-1]])
    return block[0], {r[0]: r for r in block[2:]}


def test_report_table_and_plots(runs):
    root, exp = runs
    out = root / "report"
    assert main([str(p) for p in sorted(root.iterdir()) if p.is_dir()] + ["--out", str(out)]) == 0
    for name in ("loss", "grad_norm", "spikes", "amax", "vanished"):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    md = (out / "report.md").read_text()
    header, cells = md_table(md, "## All metrics")
    assert list(cells) == ["standard", "mhc"]  # one row per group, in mode order

    def col(mode, name):
        return cells[mode][header.index(name)]

    def mean_std(key, mode, scale=1.0):
        vals = np.array([exp[(mode, s)][key] for s in (0, 1)]) * scale
        return vals.mean(), vals.std(ddof=1)  # sample std over seeds

    m, s = mean_std("final_train_loss", "mhc")
    assert col("mhc", "final train loss") == f"{m:.4f} ± {s:.4f}"
    m, s = mean_std("final_val_loss", "standard")
    assert col("standard", "final val loss") == f"{m:.4f} ± {s:.4f}"
    assert col("standard", "loss spikes") == "2.0 ± 0.0"  # the two planted spikes, recomputed from the loss
    assert col("mhc", "loss spikes") == "2.5 ± 0.7"  # logged counts 2 and 3
    assert col("mhc", "max Amax fwd") == "5.5 ± 0.7071" and col("mhc", "max Amax bwd") == "11 ± 1.414"
    m, s = mean_std("vanished/1e-04", "mhc", 100)
    assert col("mhc", "vanished 1e-04 %") == f"{m:.3f} ± {s:.3f}"
    assert col("standard", "max Amax fwd") == "n/a"
    m, s = mean_std("tokens_per_s", "mhc")
    assert col("mhc", "tokens/s") == f"{m:.0f} ± {s:.0f}"
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 6 and "amax.png" in page  # headline + all metrics, header + 2 rows each
    assert json.loads((out / "summary.json").read_text())["mhc"]["seeds"] == [0, 1]


def test_offline_stability_json_fills_missing_probes(runs):
    root, _ = runs
    (root / "std_s0" / "stability.json").write_text(json.dumps({"metrics": {"amax/fwd/composite": 1.0,
                                                                            "vanished/1e-04": 0.25}}))
    summary = compare([root / "std_s0"], root / "r")
    assert summary["standard"]["max_amax_fwd"]["mean"] == 1.0
    assert summary["standard"]["vanished/1e-04"]["mean"] == 0.25


def test_default_out_is_next_to_the_runs(runs, tmp_path):
    from evals.compare import default_out

    root, _ = runs
    dirs = [p for p in sorted(root.iterdir()) if p.is_dir()]
    assert main([str(p) for p in dirs]) == 0  # the guide's command: no --out
    assert (root / "compare" / "report.md").is_file()
    assert default_out([dirs[0]]) == root.resolve() / "compare"  # one run: not inside the run itself
    assert default_out([tmp_path / "a" / "x", tmp_path / "b" / "y"]) == tmp_path.resolve() / "compare"


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no metrics.jsonl"):
        compare([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "nomode").mkdir()
    (tmp_path / "nomode" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # cut line
    with pytest.raises(RunDirError, match="residual mode unknown"):
        compare([tmp_path / "nomode"], tmp_path / "out")


@pytest.fixture(scope="module")
def quickstart_runs(tmp_path_factory):
    """The real quickstart (launch/quickstart.py), all four modes, shortened to 12 steps."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", REPO / "launch" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    out = tmp_path_factory.mktemp("quickstart")
    assert quickstart.main(["logging.progress_bar=false", "train.eval_batches=1", "metrics.probe_every=6",
                            "--out", str(out), "--steps", "12"]) == 0
    return out


def test_quickstart_runs(quickstart_runs, tmp_path):
    modes = ("standard", "hc", "mhc", "grid")
    summary = compare([quickstart_runs / m for m in modes], tmp_path)
    assert list(summary) == list(modes)
    for m, row in summary.items():
        records = [json.loads(ln) for ln in (quickstart_runs / m / "metrics.jsonl").read_text().splitlines()
                   if ln.strip()]
        train = [r for r in records if "loss" in r]
        assert row["final_train_loss"]["mean"] == pytest.approx(np.mean([r["loss"] for r in train[-10:]]))
        assert row["final_val_loss"]["mean"] == [r["val_loss"] for r in records if "val_loss" in r][-1]
        assert row["tokens_per_s"]["mean"] == pytest.approx(np.median([r["tokens_per_s"] for r in train]))
        assert row["loss_spikes"]["mean"] == train[-1]["spike/loss_count"]
        amax = [r["amax/fwd/composite"] for r in records if "amax/fwd/composite" in r]
        if m in ("hc", "mhc"):
            assert len(amax) >= 2 and row["max_amax_fwd"]["mean"] == pytest.approx(max(amax))
        vanished = [r["vanished/1e-04"] for r in records if "vanished/1e-04" in r]
        assert row["vanished/1e-04"]["mean"] == pytest.approx(vanished[-1])
    _, headline = md_table((tmp_path / "report.md").read_text())
    assert list(headline) == list(modes)  # one row per mode
    assert all((tmp_path / f"{n}.png").stat().st_size > 5000 for n in ("loss", "grad_norm", "spikes", "amax"))


# ---------------------------------------------------------------- launch/sweep.py
FAKE_PRETRAIN = '''
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run = Path(args["run_dir"]); run.mkdir(parents=True, exist_ok=True)
seed, mode = int(args["train.seed"]), args["model.residual_mode"]
(run / "config.yaml").write_text(f"model:\\n  residual_mode: {mode}\\ntrain:\\n  seed: {seed}\\n")
lines = [{"step": s, "loss": 5.0 + seed + 0.001 * (s % 2), "grad_norm": 1.0, "tokens_per_s": 100.0} for s in range(1, 41)]
lines.append({"step": 40, "val_loss": 4.0 + seed})
(run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in lines))
'''


def sweep(*args):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep", REPO / "launch" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(a) for a in args])


def test_sweep_print_only(tmp_path, capsys):
    assert sweep("--config", "configs/tiny_cpu.yaml", "--modes", "standard,mhc", "--seeds", "2", "--out", tmp_path,
                 "--print-only", "--launcher", "accelerate launch --num_processes 8", "train.max_steps=10") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(ln.startswith("accelerate launch --num_processes 8 ") for ln in lines[:4])
    assert "model.residual_mode=mhc train.seed=1 run_dir=" + str(tmp_path / "mhc_seed1") in lines[3]
    assert lines[3].endswith("train.max_steps=10") and "compare.py" in lines[4]
    with pytest.raises(SystemExit, match="not in"):
        sweep("--config", "configs/tiny_cpu.yaml", "--modes", "standard,resnet", "--print-only")


def test_sweep_runs_every_mode_and_seed_then_compares(tmp_path):
    fake = tmp_path / "fake_pretrain.py"
    fake.write_text(FAKE_PRETRAIN)
    out = tmp_path / "sweep"
    launcher = f"{sys.executable} {fake}"
    assert sweep("--config", "configs/tiny_cpu.yaml", "--modes", "hc,grid", "--seeds", "2", "--out", out,
                 "--launcher", launcher) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary) == ["hc", "grid"] and summary["hc"]["seeds"] == [0, 1]
    assert summary["grid"]["final_val_loss"]["mean"] == pytest.approx(4.5)
    with pytest.raises(SystemExit, match="config error"):
        sweep("--config", "configs/tiny_cpu.yaml", "--out", out, "--launcher", launcher, "train.max_stepz=3")


# ---------------------------------------------------------------- argument and input checks
def test_a_run_given_twice_is_refused(runs, capsys):
    root, _ = runs
    a = root / "mhc_s0"
    out = root / "r"
    assert main([str(a), str(a), "--out", str(out)]) == 2  # once as two "seeds" it was seeds=2 ± 0.0000
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "given twice" in err and str(a) in err
    assert not out.exists()
    with pytest.raises(RunDirError, match="given twice"):
        compare([a, root / "mhc_s1" / ".." / "mhc_s0"], out)  # same directory after resolving
    (root / "link").symlink_to(a)
    with pytest.raises(RunDirError, match="given twice"):
        compare([a, root / "link"], out)


def test_seeds_of_different_lengths_are_named_in_a_warning(runs, capsys):
    root, _ = runs
    short = root / "mhc_s1" / "metrics.jsonl"
    short.write_text("".join(ln + "\n" for ln in short.read_text().splitlines()[:6]))  # steps 1..6
    with pytest.warns(UserWarning, match="different steps") as caught:
        compare([root / "mhc_s0", root / "mhc_s1", root / "std_s0"], root / "r")
    msg = str(caught[0].message)
    assert f"{root / 'mhc_s0'}: step 300" in msg and f"{root / 'mhc_s1'}: step 6" in msg and "std_s0" not in msg
    assert main([str(root / "mhc_s0"), str(root / "mhc_s1"), "--out", str(root / "r2")]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "different steps" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: mhc:") and "step 6" in warned[0]


def test_same_length_seeds_do_not_warn(runs):
    import warnings

    root, _ = runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare([root / "mhc_s0", root / "mhc_s1"], root / "r")


@pytest.mark.parametrize("text", ["not json\n{oops\n", "", '{"loss": 1.0}\n'])
def test_a_run_without_readable_records_is_an_error(runs, capsys, text):
    root, _ = runs
    metrics = root / "mhc_s1" / "metrics.jsonl"
    metrics.write_text(text)
    assert main([str(root / "mhc_s0"), str(root / "mhc_s1"), "--out", str(root / "r")]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(metrics) in lines[0] and "no readable metrics records" in lines[0]
    assert "warning:" not in err  # one error, not a warning per line
    with pytest.raises(RunDirError, match="no readable metrics records"):
        compare([root / "mhc_s1"], root / "r")


def test_a_partly_unreadable_log_warns_per_line(runs):
    root, _ = runs
    metrics = root / "mhc_s0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 301, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: not a JSON object"):
        summary = compare([root / "mhc_s0"], root / "r")
    assert summary["mhc"]["seeds"] == [0]


@pytest.mark.parametrize("window", ["0", "-3", "x"])
def test_final_window_must_be_at_least_one(runs, capsys, window):
    root, _ = runs
    with pytest.raises(SystemExit) as exc:
        main([str(root / "mhc_s0"), "--out", str(root / "r"), f"--final-window={window}"])
    assert exc.value.code == 2
    assert "--final-window" in capsys.readouterr().err
    assert not (root / "r").exists()
    with pytest.raises(ConfigError, match="final window must be >= 1"):
        compare([root / "mhc_s0"], root / "r", final_window=0)


def test_final_window_one_is_the_last_loss(runs):
    root, exp = runs
    summary = compare([root / "mhc_s0"], root / "r", final_window=1)
    losses = [json.loads(ln)["loss"] for ln in (root / "mhc_s0" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(ln)]
    assert summary["mhc"]["final_train_loss"]["mean"] == losses[-1]


def test_seeds_with_other_settings_and_diverged_runs_are_named(runs):
    root, _ = runs
    for name, lr in (("mhc_s0", 1e-3), ("mhc_s1", 0.5)):  # not seeds of one setting
        cfg = yaml.safe_load((root / name / "config.yaml").read_text())
        cfg["optim"] = {"lr": lr}
        (root / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "std_s1" / "DIVERGED").write_text("non-finite loss at step 290; last good checkpoint step_200")
    with pytest.warns(UserWarning) as caught:
        summary = compare([root / "mhc_s0", root / "mhc_s1", root / "std_s0", root / "std_s1"], root / "r")
    messages = [str(w.message) for w in caught]
    assert any("mhc: the runs averaged as its seeds differ in more than the seed (optim.lr)" in m for m in messages)
    assert any("std_s1 diverged (non-finite loss at step 290" in m for m in messages)
    assert summary["standard"]["diverged"] == [str(root / "std_s1")] and summary["mhc"]["diverged"] == []
    assert "**diverged**: non-finite loss at step 290" in (root / "r" / "report.md").read_text()
