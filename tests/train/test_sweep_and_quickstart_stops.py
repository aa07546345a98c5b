"""launch/sweep.py and launch/quickstart.py stop when a run is interrupted (no report built from an
unfinished run), pass the signal on instead of killing the run mid-checkpoint, and refuse
overrides that would silently break the sweep."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# stands in for launch/pretrain.py: waits for a signal like the trainer, then exits 4 (interrupted)
FAKE_PRETRAIN = '''
import signal, sys, time
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run = Path(args["run_dir"]); run.mkdir(parents=True, exist_ok=True)
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append("SIGTERM"))
signal.signal(signal.SIGINT, lambda s, f: got.append("SIGINT"))
(run / "started").write_text("1")
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # "writing the checkpoint": the sweep must wait, not kill
(run / "stopped").write_text(",".join(got))
sys.exit(4)
'''


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "launch" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_refuses_overrides_it_sets_per_run(tmp_path):
    sweep = load("sweep")
    for override in ("model.residual_mode=mhc", "run_dir=runs/x", "train.seed=3"):
        with pytest.raises(SystemExit, match="the sweep sets"):
            sweep.main(["--config", "configs/tiny_cpu.yaml", "--out", str(tmp_path), "--print-only", override])
    with pytest.raises(SystemExit, match="config error"):  # --print-only checks the config too
        sweep.main(["--config", "configs/tiny_cpu.yaml", "--print-only", "optim.lr=abc"])


def test_sweep_seeds_are_replicates_and_a_fixed_data_order_is_warned_about(tmp_path, capsys):
    sweep = load("sweep")
    assert sweep.main(["--config", "configs/tiny_cpu.yaml", "--out", str(tmp_path), "--modes", "mhc", "--seeds", "2",
                       "--print-only"]) == 0
    out, err = capsys.readouterr()
    assert "train.seed=0" in out and "train.seed=1" in out and "order_seed" not in err  # seed drives the order too
    assert sweep.main(["--config", "configs/tiny_cpu.yaml", "--out", str(tmp_path), "--modes", "mhc", "--seeds", "2",
                       "--print-only", "data.order_seed=5"]) == 0
    assert "data.order_seed=5 is set, so every seed trains on the same data order" in capsys.readouterr().err


def test_sweep_runs_h_res_maps_as_modes(tmp_path, capsys):
    sweep = load("sweep")
    assert sweep.main(["--config", "configs/tiny_cpu.yaml", "--out", str(tmp_path), "--modes",
                       "standard,mhc,mhc[kronecker]", "--seeds", "1", "--print-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = {line.split("run_dir=")[1].split()[0]: line for line in lines if "run_dir=" in line}
    assert set(runs) == {str(tmp_path / n) for n in ("standard_seed0", "mhc_seed0", "mhc-kronecker_seed0")}
    assert "model.h_res_map=kronecker" in runs[str(tmp_path / "mhc-kronecker_seed0")]
    assert not any("model.h_res_map" in runs[str(tmp_path / n)] for n in ("standard_seed0", "mhc_seed0"))
    for bad, message in [("hc[kronecker]", "for mhc only"), ("mhc[birkhoff]", "for mhc only"),
                         ("mhc,mhc", "twice"), ("mhc[kronecker", "not in")]:
        with pytest.raises(SystemExit, match=message):
            sweep.main(["--config", "configs/tiny_cpu.yaml", "--modes", bad, "--print-only"])
    with pytest.raises(SystemExit, match=r"config error \(mhc\[kronecker\]\).*power of 2"):  # checked per mode
        sweep.main(["--config", "configs/tiny_cpu.yaml", "--modes", "standard,mhc[kronecker]", "--print-only",
                    "model.n_streams=6"])


def test_sigterm_to_the_sweep_stops_the_run_at_a_checkpoint_and_the_sweep(tmp_path):
    fake = tmp_path / "fake_pretrain.py"
    fake.write_text(FAKE_PRETRAIN)
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "launch" / "sweep.py"), "--config", "configs/tiny_cpu.yaml",
           "--modes", "standard,hc", "--seeds", "1", "--out", str(out), "--launcher", f"{sys.executable} {fake}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    first = out / "standard_seed0"
    deadline = time.time() + 60
    while time.time() < deadline and not (first / "started").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the sweep only, as a scheduler would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert (first / "stopped").read_text() == "SIGTERM"  # passed on, and the run was let finish
    assert not (out / "hc_seed0").exists() and not (out / "report").exists()
    assert "interrupted during standard_seed0" in err


def test_quickstart_stops_when_a_run_is_interrupted(tmp_path, monkeypatch, capsys):
    quickstart = load("quickstart")
    import mhc_lm.train as train

    started = []

    class Interrupted:
        def __init__(self, cfg, callbacks=None):
            started.append(cfg.model.residual_mode)

        def fit(self):
            return "interrupted"

    monkeypatch.setattr(train, "Trainer", Interrupted)
    monkeypatch.setattr("mhc_lm.data.prepare_data", lambda cfg: None)
    code = quickstart.main(["--out", str(tmp_path / "qs"), "--steps", "5", "--modes", "standard", "hc"])
    assert code == 4 and started == ["standard"]
    assert not (tmp_path / "qs" / "summary.json").exists()
    assert "interrupted" in capsys.readouterr().err


def test_quickstart_bad_arguments_exit_2(tmp_path, capsys):
    quickstart = load("quickstart")
    assert quickstart.main(["--out", str(tmp_path), "train.lr=3"]) == 2  # optim.lr is the key
    assert "train.lr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        quickstart.main(["--out", str(tmp_path), "--steps", "0"])
    assert err.value.code == 2


def test_quickstart_warms_the_cpu_kernels_only_for_runs_that_use_them(monkeypatch):
    from mhc_lm import train

    quickstart = load("quickstart")
    started = []
    monkeypatch.setattr(quickstart.subprocess, "Popen", lambda argv, **kw: started.append(argv) or "proc")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # on CUDA the kernels are Triton's: no warm-up

    def configs(*overrides_per_run):
        return [train.load_run_config(REPO / "configs" / "tiny_cpu.yaml", list(o)) for o in overrides_per_run]

    assert quickstart.start_kernel_warmup(configs(["model.residual_mode=standard"])) is None
    assert quickstart.start_kernel_warmup(configs(["model.residual_mode=mhc", "model.cpu_kernels=false"])) is None
    assert started == []
    assert quickstart.start_kernel_warmup(configs(["model.residual_mode=standard"], ["model.residual_mode=hc"])) == "proc"
    assert started == [[sys.executable, "-m", "mhc_lm.cpu_kernels.warm", "--background"]]
