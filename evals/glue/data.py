"""GLUE data: from the Hub (`nyu-mll/glue`), the original GLUE TSV layout, or local parquet/json.

Every loader returns a `datasets.Dataset` with the Hub's columns: the task's text columns and
`label` (int class id, or float score for STS-B), so the protocols never see the source.

Local layout (`--data-dir DIR`), per task folder `DIR/<CoLA|SST-2|MRPC|STS-B|QQP|MNLI|QNLI|RTE|WNLI>`
(the lower-case Hub name, e.g. `DIR/sst2`, works too):
  - original GLUE download: `train.tsv`, `dev.tsv` (MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`);
  - Hub columns as parquet or JSON lines: `train.parquet`, `validation.parquet` (or the Hub's
    own shard names `validation-00000-of-00001.parquet`), `.jsonl`, `.json`.

Every local format is read here (not by `datasets.load_dataset`) and validated row by row with the
same rules (`_parse_label`, `_parse_text`): errors name `file:line` (TSV, JSON) or `file: row N`
(parquet). Label -1 (the Hub's unlabeled test rows) is always refused: only dev sets are scored.
"""

from __future__ import annotations

import csv
import io
import json
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


UNLABELED = -1  # the Hub's label of the unlabeled GLUE test rows
STSB_RANGE = (0.0, 5.0)  # STS-B similarity scores


def _unlabeled(where: str) -> GlueDataError:
    return GlueDataError(f"{where}: label -1 marks an unlabeled row (unlabeled rows: the test split of "
                         f"GLUE has no labels; use validation)")


def _label_ids(spec: TaskSpec) -> dict[str, int]:
    """Class-name strings a local file may hold -> Hub label id."""
    names = {name: i for i, name in enumerate(spec.label_names)}
    return {**names, **(spec.tsv_label_map or {})}


def _parse_label(spec: TaskSpec, raw, where: str) -> int | float | None:
    """A label as read from any local format -> Hub id (int) or STS-B score (float).

    `raw` is a TSV field (str) or a JSON / parquet value (int, float, str, None, ...). None is
    returned only for MNLI's '-' (no gold label), which the caller skips; everything else that is
    not a valid label raises a `GlueDataError` starting with `where` (file:line or file row).
    """
    if raw is None:
        raise GlueDataError(f"{where}: label is missing (null)")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise GlueDataError(f"{where}: label {raw!r} ({type(raw).__name__}) is not "
                            f"{'a number' if spec.is_regression else 'a class id or name'}")
    if isinstance(raw, str):
        raw = raw.strip()
    if spec.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise GlueDataError(f"{where}: score {raw!r} is not a number") from None
        if score == UNLABELED:
            raise _unlabeled(where)
        lo, hi = STSB_RANGE
        if not lo <= score <= hi:  # also refuses nan
            raise GlueDataError(f"{where}: score {raw!r} is outside the STS-B range {lo:g}..{hi:g}")
        return score
    ids = _label_ids(spec)
    if isinstance(raw, str):
        if raw == NO_GOLD_LABEL and spec.tsv_label_map is not None:
            return None
        if raw in ids:
            return ids[raw]
        try:
            label = int(raw)
        except ValueError:
            raise GlueDataError(f"{where}: label {raw!r} is not one of {sorted(ids)} nor a class id "
                                f"0..{spec.num_labels - 1}") from None
    elif isinstance(raw, float):
        if not raw.is_integer():
            raise GlueDataError(f"{where}: label {raw!r} is not an integer class id")
        label = int(raw)
    else:
        label = raw
    if label == UNLABELED:
        raise _unlabeled(where)
    if not 0 <= label < spec.num_labels:
        raise GlueDataError(f"{where}: label {label} is outside 0..{spec.num_labels - 1}")
    return label


def _parse_text(value, column: str, where: str) -> str:
    if value is None:
        raise GlueDataError(f"{where}: text column {column!r} is missing (null)")
    if not isinstance(value, str):
        raise GlueDataError(f"{where}: text column {column!r} holds {value!r} ({type(value).__name__}), "
                            f"not a string")
    return value


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text of a local file (a leading byte-order mark is dropped); errors name file:line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise GlueDataError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start}); GLUE files are "
                            f"UTF-8: re-encode the file (e.g. iconv -f latin1 -t utf-8)") from None


def _to_dataset(spec: TaskSpec, out: dict[str, list], path: Path, skipped: int) -> "datasets.Dataset":
    import datasets

    if not out["label"]:
        raise GlueDataError(f"{path}: no labelled rows" if skipped else f"{path}: no rows (empty file)")
    if skipped:
        print(f"[glue] {path}: skipped {skipped} row(s) without a gold label", file=sys.stderr)
    features = datasets.Features({
        **{c: datasets.Value("string") for c in spec.text_columns},
        "label": datasets.Value("float32" if spec.is_regression else "int64"),
    })
    return datasets.Dataset.from_dict(out, features=features)


def read_glue_tsv(path: Path, spec: TaskSpec) -> "datasets.Dataset":
    """One split of the original GLUE download (tab-separated, no quoting)."""
    path = Path(path)
    text = _decode(path, path.read_bytes())  # MRPC files start with a BOM
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
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
    return _to_dataset(spec, out, path, skipped)


def _needed(spec: TaskSpec) -> list[str]:
    return [*spec.text_columns, "label"]


def _missing_columns(spec: TaskSpec, found: list[str], source: str) -> GlueDataError:
    needed = _needed(spec)
    missing = [c for c in needed if c not in found]
    return GlueDataError(f"{source}: missing column(s) {missing} (found {found}); "
                         f"GLUE {spec.name} needs {needed}")


def _check_columns(ds: "datasets.Dataset", spec: TaskSpec, source: str) -> "datasets.Dataset":
    needed = _needed(spec)
    if any(c not in ds.column_names for c in needed):
        raise _missing_columns(spec, ds.column_names, source)
    return ds.select_columns(needed)


def _add_record(spec: TaskSpec, record, where: str, out: dict[str, list]) -> bool:
    """Validate one JSON / parquet record into `out`; False when it is skipped (MNLI '-')."""
    if not isinstance(record, dict):
        raise GlueDataError(f"{where}: expected a JSON object with columns {_needed(spec)}, "
                            f"got {type(record).__name__}")
    missing = [c for c in _needed(spec) if c not in record]
    if missing:
        raise GlueDataError(f"{where}: missing column(s) {missing} (found {list(record)}); "
                            f"GLUE {spec.name} needs {_needed(spec)}")
    label = _parse_label(spec, record["label"], where)
    if label is None:
        return False
    texts = [_parse_text(record[c], c, where) for c in spec.text_columns]
    for c, t in zip(spec.text_columns, texts):
        out[c].append(t)
    out["label"].append(label)
    return True


def _json_records(path: Path):
    """(line, record) of a JSON lines file, or of a JSON array of objects (`.json`)."""
    text = _decode(path, path.read_bytes())
    decoder = json.JSONDecoder()
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise GlueDataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        # the line of each item: decode them again one by one from their start offsets
        pos = last = text.index("[") + 1
        line = text.count("\n", 0, pos) + 1
        for _ in items:
            while text[pos] in " \t\r\n,":
                pos += 1
            line, last = line + text.count("\n", last, pos), pos
            record, pos = decoder.raw_decode(text, pos)
            yield line, record
        return
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except json.JSONDecodeError as err:
            raise GlueDataError(f"{path}:{n}: not valid JSON ({err.msg}, column {err.colno}); a .jsonl "
                                f"file holds one JSON object per line") from None


def read_json_split(path: Path, spec: TaskSpec) -> "datasets.Dataset":
    """One split as JSON lines (the Hub's columns, one object per line) or a JSON array; errors
    name `file:line`."""
    path = Path(path)
    out: dict[str, list] = {col: [] for col in _needed(spec)}
    skipped = 0
    for n, record in _json_records(path):
        skipped += not _add_record(spec, record, f"{path}:{n}", out)
    return _to_dataset(spec, out, path, skipped)


def read_parquet_split(files: list[Path], spec: TaskSpec) -> "datasets.Dataset":
    """One split as parquet file(s) with the Hub's columns; errors name the file and its row
    (1-based, counting data rows: parquet has no lines)."""
    import pyarrow.parquet as pq

    out: dict[str, list] = {col: [] for col in _needed(spec)}
    skipped = 0
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception as err:  # not parquet, truncated, ...
            raise GlueDataError(f"{path}: not a readable parquet file ({err})") from None
        if any(c not in table.column_names for c in _needed(spec)):
            raise _missing_columns(spec, table.column_names, str(path))
        if table.num_rows == 0:
            raise GlueDataError(f"{path}: no rows (empty file)")
        columns = {c: table.column(c).to_pylist() for c in _needed(spec)}
        for i in range(table.num_rows):
            record = {c: columns[c][i] for c in columns}
            skipped += not _add_record(spec, record, f"{path}: row {i + 1}", out)
    return _to_dataset(spec, out, files[0] if len(files) == 1 else files[0].parent, skipped)


def load_local_split(data_dir: Path, spec: TaskSpec, split: str) -> "datasets.Dataset":
    path = split_file(task_dir(data_dir, spec), spec, split)
    if path.suffix == ".tsv":
        return read_glue_tsv(path, spec)
    if path.suffix == ".parquet":
        files = sorted(path.parent.glob(f"{split}-*.parquet")) if "-" in path.stem else [path]
        return read_parquet_split(files, spec)
    return read_json_split(path, spec)


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
