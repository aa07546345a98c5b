"""Progress lines when stdout is not a terminal (mhc_lm/train/progress.py): a redirected tiny run
prints them; the cadence (log_every, progress_every_s, first and last step); none on a terminal."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from mhc_lm.config_utils import save_config
from mhc_lm.train.progress import ProgressLog, duration, format_line
from tests.train.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\[mhc-lm\] step (\d+)/8 \(\d+%\) \| loss \d+\.\d{4} \| lr \S+ \| grad norm \S+ \| [\d,]+ tok/s "
                  r"\| elapsed \S+ \| ETA \S+$")


def test_a_redirected_tiny_run_prints_progress_lines(tmp_path):
    cfg = tiny_config(tmp_path / "run", logging={"log_every": 2, "progress_every_s": 0.0, "progress_bar": True})
    save_config(cfg, tmp_path / "run.yaml")
    with open(tmp_path / "out.log", "w") as log:  # stdout and stderr to a file, as nohup / Slurm do
        subprocess.run([sys.executable, str(ROOT / "tests" / "train" / "toy_run.py"), str(tmp_path / "run.yaml")],
                       stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    text = (tmp_path / "out.log").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("[mhc-lm] step ")]
    assert [int(LINE.match(ln).group(1)) for ln in lines] == [1, 2, 4, 6, 8], text
    assert "%|" not in text  # no tqdm bar in a log file


def test_cadence_follows_log_every_and_the_minimum_interval():
    now = [0.0]
    out = io.StringIO()
    log = ProgressLog(total=100, start_step=10, tokens_per_step=1000, log_every=5, every_s=30.0, is_main=True,
                      stream=out, enabled=True, clock=lambda: now[0])
    printed = []
    for step in range(11, 101):
        now[0] += 4.0  # 4 s per step: a line at most every 30 s, on multiples of 5
        if log.update(step, {"loss": 2.0, "lr": 1e-3, "grad_norm": 0.5}):
            printed.append(step)
    assert printed[0] == 11 and printed[-1] == 100  # the first step of this process and the last
    assert all(s % 5 == 0 for s in printed[1:-1])
    assert all(b - a >= 8 for a, b in zip(printed[1:-1], printed[2:-1]))  # >= 30 s apart at 4 s per step
    assert out.getvalue().count("\n") == len(printed)


def test_no_lines_on_a_terminal_or_off_the_main_process():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    assert ProgressLog(10, 0, 1, 1, 0.0, True, stream=tty).update(1, {}) is None and tty.getvalue() == ""
    assert ProgressLog(10, 0, 1, 1, 0.0, False, stream=io.StringIO()).update(1, {}) is None


def test_line_fields():
    line = format_line(50, 200, {"loss": 3.14159, "lr": 3e-4, "grad_norm": 1.25, "mem_gb": 12.34}, elapsed=100.0,
                       steps_done=50, tokens_done=50 * 4096)
    assert line == ("[mhc-lm] step 50/200 (25%) | loss 3.1416 | lr 3.00e-04 | grad norm 1.25 | 2,048 tok/s | "
                    "elapsed 1m40s | ETA 5m00s | peak mem 12.3 GiB")
    assert (duration(3725), duration(59), duration(float("nan"))) == ("1h02m", "59s", "?")
