"""`train.keep_host_memory`: freed blocks are reused instead of page-faulted back on every step.

Each case runs in a fresh process (the glibc thresholds are process-wide and cannot be unset).
The check counts minor page faults (`ru_minflt`) while tensors of 4 and 2 MiB, the size of a
sub-layer's stream at the step-time shape, are made, written and freed 20 times: glibc's
defaults serve them with fresh `mmap`s (one fault per page touched: 1536 per round with 4 KiB
pages, 50-130 seen with transparent huge pages), the kept setting from the heap (none after warm-up).
"""

import platform
import subprocess
import sys
import textwrap

import pytest

FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from mhc_lm.train import host_memory
    if sys.argv[1] == "keep":
        assert host_memory.keep_freed_memory()
    def step():
        a = torch.empty(1 << 20); a.fill_(1.0)
        b = torch.empty(1 << 19); b.fill_(2.0)
        del a, b
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
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
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@glibc
def test_kept_memory_takes_no_page_faults_where_the_defaults_take_one_per_page():
    default = float(_run(FAULTS, "default"))
    kept = float(_run(FAULTS, "keep"))
    assert default >= 20, f"glibc's defaults should page-fault the fresh 6 MiB each round, saw {default}"
    assert kept <= 1, f"kept memory should be reused without faults, saw {kept} per round"


@glibc
@pytest.mark.parametrize("keep", ["true", "false"])
def test_the_trainer_applies_the_setting_on_cpu_only_when_asked(tmp_path, keep):
    applied = _run(TRAINER, str(tmp_path / "run"), keep)
    assert applied == ("True" if keep == "true" else "None")
