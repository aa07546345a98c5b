"""One training run's directory, read and written through one type: `RunDir`.

    RUN_DIR/
      config.yaml          the resolved run config (written first at every start)
      meta.json            command, git revision, package versions, host, world size
      metrics.jsonl        one JSON object per line; every line has "step" (non-finite floats as "nan"/"inf")
      DIVERGED             a `Divergence` record (JSON) while the last attempt ended non-finite
      checkpoints/step_XXXXXXX/   atomic checkpoints (mhc_lm.train.checkpoint)
      tokenizer/           the tokenizer of the run's data
      hf/                  the exported Hugging Face folder (config.json, weights, tokenizer, remote code)
      stability.json       the offline probe (`python -m evals.stability`)
      .hf_export_files.json and the files of hf/, hard-linked at the top

A run directory is untrusted input: nothing in it is unpickled, and every file that is not what
it should be is a `RunDirError` naming the file and the fix. Library code raises it; only the
`main()` of a command turns it into one line on stderr and exit status 2.

This module sits under `mhc_lm.train` and `mhc_lm.metrics` (both import it; it imports neither),
so the config is read as a plain dict, not as the typed `RunConfig`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mhc_lm.config_utils import ConfigError
from mhc_lm.files import write_text_atomic

CONFIG, META, METRICS, DIVERGED, STABILITY = "config.yaml", "meta.json", "metrics.jsonl", "DIVERGED", "stability.json"
CHECKPOINTS, EXPORT, TOKENIZER = "checkpoints", "hf", "tokenizer"
RUN_FILES = frozenset({CONFIG, META, METRICS, DIVERGED, STABILITY})
"""The run's own files at the top of RUN_DIR (an export never replaces them)."""

DEFAULT_SEED = 0
"""`train.seed` of a config.yaml that does not name one (the default of `TrainConfig.seed`)."""

NON_FINITE = ("nan", "inf", "-inf")  # how non-finite floats are stored in JSON (which has none)


class RunDirError(ConfigError):
    """A run directory (or one of its files) that cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------- JSONL records
def _encode(value):
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _decode(value):
    return float(value) if isinstance(value, str) and value in NON_FINITE else value


def encode_record(record: dict) -> dict:
    """`record` with non-finite floats as "nan" / "inf" / "-inf" (JSON has no such numbers)."""
    return {k: _encode(v) for k, v in record.items()}


def iter_jsonl(path: str | Path, on_bad: Callable[[int, str], None] | None = None) -> Iterator[tuple[str, dict]]:
    """(line, record) for every line of a JSONL file that holds a JSON object. Other lines (one torn
    by a kill mid-write, a stray blank) are skipped; `on_bad(line_number, line)` hears of each."""
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            yield line, rec
        elif on_bad is not None:
            on_bad(i, line)


def read_metrics(path: str | Path, on_bad: Callable[[int, str], None] | None = None) -> list[dict]:
    """The records of a metrics.jsonl file, non-finite values decoded back to floats; unreadable
    lines skipped as in `iter_jsonl`."""
    return [{k: _decode(v) for k, v in rec.items()} for _, rec in iter_jsonl(path, on_bad)]


# ---------------------------------------------------------------- divergence
_LEGACY_STEP = re.compile(r"at step (\d+)")


@dataclass(frozen=True)
class Divergence:
    """Why and where a run stopped non-finite: the DIVERGED record.

    step: the optimizer step (1-based) that was not taken (None: an old note that names none);
    reason: "loss" (non-finite loss) or "grad_norm" (finite loss, non-finite gradient norm), "" if unknown;
    loss, grad_norm: the values at that step; last_checkpoint: the last complete checkpoint (None: none);
    message: the sentence the trainer printed."""

    step: int | None
    reason: str
    loss: float | None = None
    grad_norm: float | None = None
    last_checkpoint: str | None = None
    message: str = ""

    @classmethod
    def at(cls, step: int, loss: float, grad_norm: float, last_checkpoint=None, message: str = "") -> "Divergence":
        reason = "loss" if not math.isfinite(loss) else "grad_norm"
        return cls(step, reason, float(loss), float(grad_norm),
                   str(last_checkpoint) if last_checkpoint is not None else None, message)

    def to_json(self) -> str:
        return json.dumps(encode_record(asdict(self))) + "\n"

    @classmethod
    def parse(cls, text: str) -> "Divergence":
        """A DIVERGED file's text: the JSON record, or the plain sentence older trainers wrote (the
        step is then read from its "at step N")."""
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and ("step" in rec or "reason" in rec):
            step = rec.get("step")
            return cls(step=int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None,
                       reason=str(rec.get("reason") or ""), loss=_float_or_none(rec.get("loss")),
                       grad_norm=_float_or_none(rec.get("grad_norm")),
                       last_checkpoint=rec.get("last_checkpoint"), message=str(rec.get("message") or ""))
        note = text.strip()
        m = _LEGACY_STEP.search(note)
        return cls(step=int(m.group(1)) if m else None, reason="", message=note)


def _float_or_none(value) -> float | None:
    value = _decode(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- the run directory
def dotted_get(tree: dict, dotted: str, default=None):
    """tree["a"]["b"] for "a.b", else `default`."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


class RunDir:
    """The files of one run directory (see the module docstring); reading never changes anything."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # paths
    config_path = property(lambda self: self.path / CONFIG)
    meta_path = property(lambda self: self.path / META)
    metrics_path = property(lambda self: self.path / METRICS)
    diverged_path = property(lambda self: self.path / DIVERGED)
    stability_path = property(lambda self: self.path / STABILITY)
    checkpoints_path = property(lambda self: self.path / CHECKPOINTS)
    export_path = property(lambda self: self.path / EXPORT)
    tokenizer_path = property(lambda self: self.path / TOKENIZER)

    # config.yaml
    def config(self) -> dict:
        """config.yaml as a plain dict ({} when the file is absent)."""
        if not self.config_path.is_file():
            return {}
        try:
            cfg = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise RunDirError(f"{self.config_path}: not valid YAML ({first}); fix or remove it") from None
        if cfg is None:
            return {}
        if not isinstance(cfg, dict):
            raise RunDirError(f"{self.config_path}: not a mapping of config sections (a {type(cfg).__name__}); "
                              "is it the config.yaml of a training run?")
        return cfg

    def setting(self, dotted: str, default=None, config: dict | None = None):
        """A dotted key of config.yaml ("train.max_steps"), else `default` (`config`: the dict
        `config()` returned, to read it once)."""
        return dotted_get(self.config() if config is None else config, dotted, default)

    def mode(self, config: dict | None = None) -> str:
        """The residual mode: config.yaml `model.residual_mode`, else hf/config.json `residual_mode`."""
        mode = self.setting("model.residual_mode", config=config)
        hf_config = self.export_path / "config.json"
        if mode is None and hf_config.is_file():
            mode = self._json(hf_config).get("residual_mode")
        if mode is None:
            raise RunDirError(f"{self.path}: residual mode unknown (no model.residual_mode in config.yaml and no "
                              "hf/config.json); is this a run directory written by launch/pretrain.py?")
        return str(mode)

    def seed(self, config: dict | None = None) -> int:
        """`train.seed` of config.yaml; DEFAULT_SEED when it names none (the value such a run trained with)."""
        seed = self.setting("train.seed", DEFAULT_SEED, config)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RunDirError(f"{self.config_path}: train.seed is {seed!r}, not an integer")
        return seed

    # records
    def metrics(self, on_bad: Callable[[int, str], None] | None = None) -> list[dict]:
        """The records of metrics.jsonl that have a "step" (lines torn by a crash are skipped and
        reported to `on_bad(line_number, line)`); a run without any such record is an error."""
        if not self.metrics_path.is_file():
            raise RunDirError(f"{self.path}: no metrics.jsonl (not a run directory written by launch/pretrain.py, "
                              "or the run never logged a step)")
        bad: list[tuple[int, str]] = []

        def note(i: int, line: str) -> None:
            bad.append((i, line))
            if on_bad is not None:
                on_bad(i, line)

        records = [rec for rec in read_metrics(self.metrics_path, note) if "step" in rec]
        if not records:
            if bad:
                i, line = bad[0]
                detail = (f"{len(bad)} unreadable line(s), the first is line {i}: "
                          f"{line[:40] + ('...' if len(line) > 40 else '')!r}")
            else:
                detail = "no JSON object with a \"step\" in it"
            raise RunDirError(f"{self.metrics_path}: no readable metrics records ({detail}); is it the metrics.jsonl "
                              "of a training run?")
        return records

    def meta(self) -> dict:
        """meta.json ({} when absent)."""
        return self._json(self.meta_path) if self.meta_path.is_file() else {}

    def stability(self) -> dict:
        """The "metrics" of stability.json ({} when absent)."""
        return self._json(self.stability_path).get("metrics", {}) if self.stability_path.is_file() else {}

    def wall_seconds(self) -> float:
        """From config.yaml (written when the run starts) to the last metrics.jsonl write; nan without them."""
        if not (self.config_path.is_file() and self.metrics_path.is_file()):
            return float("nan")
        return self.metrics_path.stat().st_mtime - self.config_path.stat().st_mtime

    # divergence
    def divergence(self) -> Divergence | None:
        """The DIVERGED record, None when the run did not diverge."""
        if not self.diverged_path.is_file():
            return None
        return Divergence.parse(self.diverged_path.read_text())

    def write_divergence(self, record: Divergence) -> None:
        write_text_atomic(self.diverged_path, record.to_json())

    def clear_divergence(self) -> Divergence | None:
        """Remove DIVERGED (a new attempt starts); returns the record it held."""
        record = self.divergence()
        self.diverged_path.unlink(missing_ok=True)
        return record

    # the exported model
    def has_export(self) -> bool:
        return (self.export_path / "config.json").is_file()

    def model_dir(self) -> Path:
        """hf/, the exported model; an error naming the fix when the run has none."""
        if not self.has_export():
            raise RunDirError(f"{self.path}: no exported model at {self.export_path} (config.json missing): the run "
                              "exports hf/ at its end (train.export_hf), or run `python launch/export_hf.py "
                              f"{self.path}`")
        return self.export_path

    @staticmethod
    def _json(path: Path) -> dict:
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(f"{path}: not valid JSON ({err}); fix or remove it") from None
        if not isinstance(obj, dict):
            raise RunDirError(f"{path}: not a JSON object")
        return obj
