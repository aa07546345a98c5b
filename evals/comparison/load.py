"""Loading run directories for `evals.compare`: one `Run` per directory, grouped into comparison
groups, with warnings for groups whose runs are not replicates of one setting."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mhc_lm.config_utils import flatten_dict
from mhc_lm.model.residual_modes import RESIDUAL_MODES
from mhc_lm.run_dir import RunDir, RunDirError, dotted_get

MODE_ORDER = tuple(RESIDUAL_MODES)
DEFAULT_H_RES_MAP = "sinkhorn"  # mhc's default H_res map: left out of the group label


@dataclass
class Run:
    path: Path
    mode: str
    seed: int
    records: list[dict]
    metrics_config: dict = field(default_factory=dict)
    stability: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    diverged: str | None = None  # the message of the run's DIVERGED record, if training diverged
    group: str = ""  # comparison group label (group_label), set by load_run

    @property
    def last_step(self) -> int:
        return max(int(r["step"]) for r in self.records)

    def setting(self, dotted: str, default=None):
        """A dotted key of the run's config.yaml (e.g. "train.max_steps"), else `default`."""
        return dotted_get(self.config, dotted, default)

    def series(self, key: str, train_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the numeric entries `key`, last value per step."""
        by_step = {}
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (not train_only or "loss" in r):
                by_step[int(r["step"])] = float(v)
        steps = np.array(sorted(by_step), dtype=np.int64)
        return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def group_label(run: Run, extra_keys: Sequence[str] = ()) -> str:
    """The comparison group of a run: its residual mode, its H_res map when not the default
    (`mhc[kronecker]`), and `key=value` of each of `extra_keys` (`--group-by optim.lr`)."""
    label = run.mode
    h_res_map = run.setting("model.h_res_map")
    mode = RESIDUAL_MODES.get(run.mode)
    if mode is not None and mode.uses_h_res_map and h_res_map not in (None, DEFAULT_H_RES_MAP):
        label += f"[{h_res_map}]"
    for key in extra_keys:
        label += f" {key.rsplit('.', 1)[-1]}={run.setting(key)}"
    return label


def load_run(path: Path, label: Callable[[Run], str] = group_label) -> Run:
    """One run directory (RunDirError when it is not one); metrics.jsonl lines cut by a crash are
    skipped with a warning naming each."""
    run_dir = RunDir(path)
    cfg = run_dir.config()
    bad_lines: list[int] = []
    records = run_dir.metrics(on_bad=lambda i, line: bad_lines.append(i))
    divergence = run_dir.divergence()
    run = Run(run_dir.path, run_dir.mode(cfg), run_dir.seed(cfg), records, cfg.get("metrics") or {},
              run_dir.stability(), cfg, None if divergence is None else divergence.message or "diverged")
    for i in bad_lines:  # once the run is known good: a broken run is one error, not a warning per line
        warnings.warn(f"{run_dir.metrics_path}:{i}: not a JSON object, skipped (a line cut by a crash?)", stacklevel=2)
    run.group = label(run)
    return run


def check_distinct(run_dirs: list[Path]) -> None:
    """Refuse a run directory given twice (after resolving `.`, `..` and symlinks): it would count as two seeds."""
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            same = f"{d}" if str(seen[key]) == str(d) else f"{seen[key]} and {d} (both {key})"
            raise RunDirError(f"run directory given twice: {same}; each run counts as one seed, pass it once")
        seen[key] = Path(d)


def group(runs: list[Run]) -> dict[str, list[Run]]:
    """{group label: runs} in mode order (standard, hc, mhc, grid, others), seeds ascending."""
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (order.get(r.mode, 99), r.group, r.seed)):
        groups.setdefault(run.group, []).append(run)
    return groups


def warn_uneven_lengths(groups: dict[str, list[Run]]) -> None:
    """Warn when the runs averaged as seeds of one group end at different steps (diverged runs, which
    stop early by definition, are named by warn_mixed_settings instead)."""
    for name, runs in groups.items():
        ends = [(r.path, r.last_step) for r in runs if not r.diverged]
        if len({s for _, s in ends}) > 1:
            warnings.warn(f"{name}: the runs averaged as its seeds end at different steps ("
                          + ", ".join(f"{p}: step {s}" for p, s in ends)
                          + "); final values mix training lengths, curves cover only the steps all logged",
                          stacklevel=3)


# settings that may differ between the seeds of one group (the rest must match to average them).
# data.seed is not among them: it picks the validation set, which must be the same to compare runs.
SEED_FREE = ("train.seed", "data.order_seed", "run_dir", "train.max_steps", "train.eval_every", "train.export_hf",
             "train.progress_bar", "checkpoint.", "logging.", "metrics.", "data.num_proc", "data.overwrite")
# data settings that change the validation tokens: they must agree across every run compared
VALIDATION_KEYS = ("data.train_files", "data.val_files", "data.corpus", "data.val_fraction", "data.seed",
                   "data.tokenizer", "data.vocab_size", "data.seq_len", "data.max_documents", "data.text_column",
                   "data.txt_sample_by", "train.eval_batches", "train.batch_size")


def _differing(runs: list[Run], keys) -> list[str]:
    flats = [flatten_dict(r.config) for r in runs if r.config]
    shared = set.intersection(*(set(f) for f in flats)) if flats else set()  # keys older configs lack: skipped
    return [k for k in sorted(shared) if keys(k) and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def warn_mixed_settings(groups: dict[str, list[Run]], group_keys: Sequence[str] = ()) -> None:
    """Warn when the runs averaged as seeds of one group differ in more than their seed (e.g. another
    lr), when runs of different groups were validated on different tokens, and name every diverged
    run (its losses are left out of the loss statistics; its spike and Amax values count)."""
    fixed = {"model.residual_mode", "model.h_res_map", *group_keys}
    for name, runs in groups.items():
        differ = _differing(runs, lambda k: not k.startswith(SEED_FREE) and k not in fixed)
        if differ:
            shown = ", ".join(differ[:6]) + (", ..." if len(differ) > 6 else "")
            warnings.warn(f"{name}: the runs averaged as its seeds differ in more than the seed ({shown}); "
                          "compare them as separate groups (--group-by KEY, or one compare call per setting)",
                          stacklevel=3)
        for r in runs:
            if r.diverged:
                warnings.warn(f"{name}: {r.path} diverged ({r.diverged[:200]}); its final losses are left out of "
                              "the loss statistics, its spike and Amax values are kept", stacklevel=3)
    every = [r for runs in groups.values() for r in runs]
    differ = _differing(every, lambda k: k in VALIDATION_KEYS)
    if differ:
        warnings.warn(f"the runs were not validated on the same tokens (they differ in {', '.join(differ)}): "
                      "their val losses are not comparable", stacklevel=3)
