"""GLUE data: from the Hub (`nyu-mll/glue`), the original GLUE TSV layout, or local parquet/json.

Every loader returns a `datasets.Dataset` with the Hub's columns: the task's text columns and
`label` (int class id, or float score for STS-B), so the protocols never see the source.

Local layout (`--data-dir DIR`), per task folder `DIR/<CoLA|SST-2|MRPC|STS-B|QQP|MNLI|QNLI|RTE|WNLI>`
(the lower-case Hub name, e.g. `DIR/sst2`, works too):
  - original GLUE download: `train.tsv`, `dev.tsv` (MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`);
  - Hub columns as parquet or JSON lines: `train.parquet`, `validation.parquet` (or the Hub's
    own shard names `validation-00000-of-00001.parquet`), `.jsonl`, `.json`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .tasks import HUB_PATH, TaskSpec, tsv_split_file

if TYPE_CHECKING:
    import datasets

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # some QQP/MNLI fields are long

NO_GOLD_LABEL = "-"  # MNLI/SNLI marker for pairs without annotator agreement


class GlueDataError(ValueError):
    """A missing or malformed GLUE file; the message names the file and the fix."""


def task_dir(data_dir: Path, spec: TaskSpec) -> Path:
    """The folder of `spec` under `data_dir` (original GLUE name or Hub name)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise GlueDataError(f"--data-dir {data_dir} is not a directory")
    for name in (spec.dir_name, spec.name, spec.name.upper(), spec.dir_name.lower()):
        if (data_dir / name).is_dir():
            return data_dir / name
    raise GlueDataError(
        f"GLUE task {spec.name}: folder {data_dir / spec.dir_name} not found (the original GLUE "
        f"layout is {data_dir}/{spec.dir_name}/train.tsv and dev.tsv); download GLUE there or "
        f"drop --data-dir to read {HUB_PATH} from the Hub")


def split_file(folder: Path, spec: TaskSpec, split: str) -> Path:
    """The file holding `split` (Hub split name) in a task folder; a clear error if none."""
    stem = tsv_split_file(spec, split)
    candidates = [folder / f"{stem}.tsv"]
    for base in dict.fromkeys((split, stem)):
        candidates += [folder / f"{base}.parquet", folder / f"{base}.jsonl", folder / f"{base}.json"]
    for c in candidates:
        if c.is_file():
            return c
    shards = sorted(folder.glob(f"{split}-*.parquet"))
    if shards:
        return shards[0]
    raise GlueDataError(
        f"GLUE task {spec.name}: no {split} split in {folder}: expected {folder / (stem + '.tsv')} "
        f"(original GLUE layout) or {folder / (split + '.parquet')} / .jsonl / .json with columns "
        f"{[*spec.text_columns, 'label']}")


def _parse_label(spec: TaskSpec, raw: str, where: str) -> int | float | None:
    raw = raw.strip()
    if spec.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise GlueDataError(f"{where}: score {raw!r} is not a number") from None
    if spec.tsv_label_map is not None:
        if raw == NO_GOLD_LABEL:
            return None
        if raw not in spec.tsv_label_map:
            raise GlueDataError(f"{where}: label {raw!r} is not one of {sorted(spec.tsv_label_map)}")
        return spec.tsv_label_map[raw]
    try:
        label = int(raw)
    except ValueError:
        raise GlueDataError(f"{where}: label {raw!r} is not an integer class id") from None
    if not 0 <= label < spec.num_labels:
        raise GlueDataError(f"{where}: label {label} is outside 0..{spec.num_labels - 1}")
    return label


def read_glue_tsv(path: Path, spec: TaskSpec) -> "datasets.Dataset":
    """One split of the original GLUE download (tab-separated, no quoting)."""
    import datasets

    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as f:  # MRPC files start with a BOM
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise GlueDataError(f"{path} is empty")
    headerless = all(col.isdigit() for col in spec.tsv_columns.values())  # CoLA
    if headerless:
        index = {hub: int(col) for hub, col in spec.tsv_columns.items()}
        body, first_line = rows, 1
    else:
        header = [h.strip() for h in rows[0]]
        missing = [col for col in spec.tsv_columns.values() if col not in header]
        if missing:
            raise GlueDataError(f"{path}: header {header} lacks column(s) {missing} of the GLUE "
                                f"{spec.dir_name} format")
        index = {hub: header.index(col) for hub, col in spec.tsv_columns.items()}
        body, first_line = rows[1:], 2
    width = max(index.values()) + 1
    out: dict[str, list] = {col: [] for col in (*spec.text_columns, "label")}
    skipped = 0
    for n, row in enumerate(body, start=first_line):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{n}"
        if len(row) < width:
            raise GlueDataError(f"{where}: {len(row)} tab-separated fields, the {spec.dir_name} format "
                                f"needs at least {width}")
        label = _parse_label(spec, row[index["label"]], where)
        if label is None:
            skipped += 1
            continue
        for col in spec.text_columns:
            out[col].append(row[index[col]])
        out["label"].append(label)
    if not out["label"]:
        raise GlueDataError(f"{path}: no labelled rows")
    if skipped:
        print(f"[glue] {path}: skipped {skipped} row(s) without a gold label", file=sys.stderr)
    features = datasets.Features({
        **{c: datasets.Value("string") for c in spec.text_columns},
        "label": datasets.Value("float32" if spec.is_regression else "int64"),
    })
    return datasets.Dataset.from_dict(out, features=features)


def _check_columns(ds: "datasets.Dataset", spec: TaskSpec, source: str) -> datasets.Dataset:
    needed = [*spec.text_columns, "label"]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise GlueDataError(f"{source}: missing column(s) {missing} (found {ds.column_names}); "
                            f"GLUE {spec.name} needs {needed}")
    return ds.select_columns(needed)


def load_local_split(data_dir: Path, spec: TaskSpec, split: str) -> "datasets.Dataset":
    import datasets

    path = split_file(task_dir(data_dir, spec), spec, split)
    if path.suffix == ".tsv":
        return read_glue_tsv(path, spec)
    kind = "parquet" if path.suffix == ".parquet" else "json"
    files = sorted(path.parent.glob(f"{split}-*.parquet")) if "-" in path.stem else [path]
    ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    return _check_columns(ds, spec, str(path))


def load_hub_split(spec: TaskSpec, split: str) -> "datasets.Dataset":
    import datasets

    try:
        ds = datasets.load_dataset(HUB_PATH, spec.name, split=split)
    except Exception as err:  # offline, no cache, or a Hub error: say what to do instead
        raise GlueDataError(
            f"could not load {HUB_PATH} ({spec.name}, split {split}) from the Hub: {err}. Offline, pass "
            f"--data-dir DIR with the original GLUE layout ({spec.dir_name}/train.tsv, dev.tsv)") from err
    return _check_columns(ds, spec, f"{HUB_PATH}/{spec.name}")


def load_split(spec: TaskSpec, split: str, data_dir: Path | None = None,
               limit: int | None = None) -> "datasets.Dataset":
    """One split (Hub name: train, validation, validation_matched, ...), first `limit` rows."""
    ds = load_local_split(Path(data_dir), spec, split) if data_dir is not None else load_hub_split(spec, split)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds
