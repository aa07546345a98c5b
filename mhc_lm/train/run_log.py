"""Run-directory records: metrics.jsonl, meta.json (git revision, versions, command), and MFU.

MFU uses the PaLM accounting (Chowdhery et al., arXiv 2204.02311, App. B): training FLOPs per
token = 6 * N (matmul parameters, the LM head included once) + 12 * L * C * T (attention scores
and values), divided by the configured per-device peak.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from mhc_lm.files import write_json_atomic
from mhc_lm.model.residual_modes import residual_mode_of
from mhc_lm.run_dir import NON_FINITE, iter_jsonl, read_metrics  # noqa: F401 (also importable from here)

# dense bf16 peak TFLOP/s per device, matched against torch.cuda.get_device_name()
# (first match wins: the specific variants before the generic names)
KNOWN_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0,
                     "L40S": 362.0, "A10G": 125.0, "4090": 165.0}
PACKAGES = ("torch", "transformers", "accelerate", "deepspeed", "datasets", "tokenizers", "triton", "mhc-lm")


def default_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), None)


def flops_per_token(model_config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of an MhcLmForCausalLM, PaLM-style."""
    c = model_config
    head_dim = c.hidden_size // c.num_attention_heads if not getattr(c, "head_dim", None) else c.head_dim
    attn = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    n = c.num_hidden_layers * (attn + mlp) + c.vocab_size * c.hidden_size  # + LM head
    n += residual_mode_of(c).extra_matmul_params()  # mhc: projection nC x (2n + K) per sub-layer, K the map's logits
    return 6.0 * n + 12.0 * c.num_hidden_layers * c.num_attention_heads * head_dim * seq_len


def memory_stats(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"mem_gb": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"mem_rss_gb": rss_kb / 2**20}


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled
        self._fh = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the resumed checkpoint (atomic rewrite)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [ln for ln, rec in iter_jsonl(self.path) if rec.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a")
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        try:
            self._fh.write(json.dumps(clean) + "\n")
            self._fh.flush()
        except OSError as err:  # a torn last line is dropped by the resume (truncate_after)
            from mhc_lm.train.checkpoint import latest_checkpoint
            from mhc_lm.train.faults import write_fault

            fault = write_fault(err, self.path, self.path.parent, latest_checkpoint(self.path.parent))
            if fault is None:
                raise
            fh, self._fh = self._fh, None
            try:
                fh.close()  # flushes the torn buffer once more: may fail again
            except OSError:
                pass
            raise fault from err

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def git_revision(repo: Path) -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def write_meta(path: Path, extra: dict | None = None) -> None:
    """meta.json: command, git revision, package versions, host; atomic write."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    meta = {
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "git": git_revision(Path(__file__).resolve().parents[2]),
        "versions": versions,
        "python": platform.python_version(),
        "host": platform.node(),
        **(extra or {}),
    }
    write_json_atomic(path, meta)
