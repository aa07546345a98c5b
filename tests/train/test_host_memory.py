"""`train.keep_host_memory`: freed blocks are reused instead of page-faulted back on every step.

Each case runs in a fresh process (the glibc thresholds are process-wide and cannot be unset).
It counts minor page faults (`ru_minflt`) per round of a step-like pattern: eight 4 MiB tensors
(a sub-layer's stream at the step-time shape) made, written, kept alive together and freed, 20
rounds. glibc's own thresholds adapt to what it has seen, so whether its defaults fault in such a
loop depends on where small allocations land (we saw 0 or ~8,000 faults per round in repeated
runs); the cases therefore first pin the mmap threshold at glibc's initial 128 KiB, where every
block is a fresh mapping and faults (the control), and then check that `keep_freed_memory`
overrides that: no fault in a typical round.
"""

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAULTS = textwrap.dedent("""
    import resource, statistics, sys, torch
    from mhc_lm.train import host_memory
    assert host_memory.mallopt(host_memory.M_MMAP_THRESHOLD, 128 << 10)  # every 4 MiB block its own mapping
    if sys.argv[1] == "keep":
        assert host_memory.keep_freed_memory()
    def step():
        live = []
        for _ in range(8):
            t = torch.empty(1 << 20)
            t.fill_(1.0)
            live.append(t)
        del live
    for _ in range(3):
        step()
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(statistics.median(faults))
""")

TRAINER = textwrap.dedent("""
    import sys
    from mhc_lm.train import Trainer, host_memory
    from tests.train.helpers import tiny_config, toy_data
    cfg = tiny_config(sys.argv[1], train={"keep_host_memory": sys.argv[2] == "true"})
    Trainer(cfg, data=toy_data(cfg))
    print(host_memory._applied)
""")

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                         cwd=REPO)  # the script imports tests.train.helpers
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@glibc
def test_kept_memory_takes_no_page_faults_where_fresh_mappings_take_one_per_page():
    fresh = float(_run(FAULTS, "control"))
    kept = float(_run(FAULTS, "keep"))
    # at least one fault per fresh block (8192 with 4 KiB pages; fewer where huge pages back the mappings)
    assert fresh >= 8, f"the control should page-fault its eight fresh blocks every round, saw {fresh}"
    assert kept == 0, f"kept memory should be reused without faults, saw {kept} in the median round"


@glibc
@pytest.mark.parametrize("keep", ["true", "false"])
def test_the_trainer_applies_the_setting_only_when_asked(tmp_path, keep):
    applied = _run(TRAINER, str(tmp_path / "run"), keep)
    assert applied == ("True" if keep == "true" else "None")
