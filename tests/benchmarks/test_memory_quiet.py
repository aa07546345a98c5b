"""benchmarks/memory.py's profiler cross-check (method 2) prints nothing of its own: libkineto's
`USDT: ... profiler_start/stop` lines are silenced (KINETO_LOG_LEVEL, set by the benchmark)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys
sys.path.insert(0, 'benchmarks')
import memory as m
shape = dict(model=dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        num_key_value_heads=1), full_layers=2, batch=1, seq=16)
model = m.build(shape, 'standard', 'none', 1, 'cpu')
print('live', m.live_bytes(model, m._batch(model, shape, 'cpu'), False) > 0)
"""


def test_the_profiler_method_prints_no_usdt_lines():
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300, check=True)
    assert "live True" in out.stdout
    assert "USDT" not in out.stdout + out.stderr and "profiler_start" not in out.stderr
