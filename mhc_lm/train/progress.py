"""Plain progress lines for logs (nohup, Slurm): when stdout is not a terminal the trainer's tqdm bar
is off, so the main process prints one line every `logging.log_every` steps, at most one per
`logging.progress_every_s` seconds, and always at the first and the last step of the run:

    [mhc-lm] step 120/300 (40%) | loss 5.1234 | lr 2.95e-03 | grad norm 0.812 | 1,234 tok/s | elapsed 1m05s | ETA 1m38s | peak mem 12.3 GiB

tokens/s and the ETA are averaged over the steps of this process (a resumed run starts its clock
again); peak mem is `torch.cuda.max_memory_allocated` (CUDA only).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 12s."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def format_line(step: int, total: int, logs: dict, elapsed: float, steps_done: int, tokens_done: int) -> str:
    rate = tokens_done / elapsed if elapsed > 0 else float("nan")
    eta = (total - step) * elapsed / steps_done if steps_done else float("nan")
    parts = [f"[mhc-lm] step {step}/{total} ({100 * step / total:.0f}%)"]
    if isinstance(logs.get("loss"), (int, float)):
        parts.append(f"loss {logs['loss']:.4f}")
    if isinstance(logs.get("lr"), (int, float)):
        parts.append(f"lr {logs['lr']:.2e}")
    if isinstance(logs.get("grad_norm"), (int, float)):
        parts.append(f"grad norm {logs['grad_norm']:.3g}")
    parts.append(f"{rate:,.0f} tok/s" if math.isfinite(rate) else "? tok/s")
    parts.append(f"elapsed {duration(elapsed)}")
    parts.append(f"ETA {duration(eta)}")
    if isinstance(logs.get("mem_gb"), (int, float)):
        parts.append(f"peak mem {logs['mem_gb']:.1f} GiB")
    return " | ".join(parts)


class ProgressLog:
    """`update(step, logs)` after every optimizer step; prints only where `enabled` (main process,
    stdout not a terminal, unless forced)."""

    def __init__(self, total: int, start_step: int, tokens_per_step: int, log_every: int, every_s: float,
                 is_main: bool, stream: TextIO | None = None, enabled: bool | None = None, clock=time.perf_counter):
        self.stream = stream if stream is not None else sys.stdout
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = not (isatty() if callable(isatty) else False)
        self.enabled = bool(enabled) and is_main
        self.total, self.start_step, self.tokens_per_step = total, start_step, tokens_per_step
        self.log_every, self.every_s, self.clock = log_every, every_s, clock
        self.t0 = clock()
        self.last_print: float | None = None

    def update(self, step: int, logs: dict) -> str | None:
        """The line printed for this step, or None."""
        if not self.enabled:
            return None
        now = self.clock()
        first, last = step == self.start_step + 1, step == self.total
        due = step % self.log_every == 0 and (self.last_print is None or now - self.last_print >= self.every_s)
        if not (first or last or due):
            return None
        done = step - self.start_step
        line = format_line(step, self.total, logs, now - self.t0, done, done * self.tokens_per_step)
        print(line, file=self.stream, flush=True)
        self.last_print = now
        return line
