"""Every local format (TSV, JSON lines, JSON array, parquet) is validated row by row: labels in
range or mapped from class names, STS-B scores numeric, text present, unlabeled test rows refused,
empty / undecodable / non-JSON files named, all with the file and its line (parquet: row)."""

import json

import pytest

from evals.glue.cli import main
from evals.glue.data import GlueDataError, load_split
from evals.glue.tasks import get_task

FORMATS = ["jsonl", "json", "parquet"]
RTE = get_task("rte")
STSB = get_task("stsb")


def _write(folder, split, fmt, rows):
    """Rows (dicts) as `<split>.<fmt>` in `folder`; the location the loader reports for row 1."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rf"{split}\.jsonl:1:"
    if fmt == "json":  # a JSON array, one object per line after the opening bracket
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
        return rf"{split}\.json:2:"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return rf"{split}\.parquet: row 1:"


def _pair(label, s2="B."):
    return {"sentence1": "A.", "sentence2": s2, "label": label}


@pytest.mark.parametrize("fmt", FORMATS)
def test_unlabeled_test_rows_are_refused(tmp_path, fmt):
    where = _write(tmp_path / "rte", "validation", fmt, [_pair(-1), _pair(-1)])
    with pytest.raises(GlueDataError, match=where + r".*unlabeled rows: the test split of GLUE has no "
                                                    r"labels; use validation"):
        load_split(RTE, "validation", tmp_path)
    where = _write(tmp_path / "stsb", "validation", fmt, [_pair(-1.0)])  # the Hub's STS-B test rows
    with pytest.raises(GlueDataError, match=where + r".*unlabeled rows"):
        load_split(STSB, "validation", tmp_path)


def test_unlabeled_dev_set_is_an_error_not_a_score(tiny_models, tmp_path, capsys):
    """Was: RTE 0.0, exit 0, saved as a normal result."""
    _write(tmp_path / "data" / "rte", "validation", "jsonl", [_pair(-1)] * 4)
    rc = main(["--model", str(tiny_models["standard"]), "--tasks", "rte", "--protocol", "zeroshot",
               "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "validation.jsonl:1: label -1 marks an unlabeled row" in capsys.readouterr().err
    assert not (tmp_path / "out" / "rte.json").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_out_of_range_names_file_and_row(tmp_path, fmt):
    where = _write(tmp_path / "rte", "train", fmt, [_pair(5)])
    with pytest.raises(GlueDataError, match=where + r" label 5 is outside 0\.\.1"):
        load_split(RTE, "train", tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_class_names_map_to_hub_ids_and_unknown_names_are_refused(tmp_path, fmt):
    _write(tmp_path / "rte", "train", fmt, [_pair("not_entailment"), _pair("entailment"), _pair("1")])
    assert load_split(RTE, "train", tmp_path)["label"] == [1, 0, 1]
    _write(tmp_path / "wnli", "train", fmt, [_pair("entailment"), _pair("not_entailment")])
    assert load_split(get_task("wnli"), "train", tmp_path)["label"] == [1, 0]  # WNLI: entailment is 1
    _write(tmp_path / "sst2", "train", fmt, [{"sentence": "Fine.", "label": "positive"}])
    assert load_split(get_task("sst2"), "train", tmp_path)["label"] == [1]
    where = _write(tmp_path / "rte", "train", fmt, [_pair("maybe")])
    with pytest.raises(GlueDataError, match=where + r" label 'maybe' is not one of \['entailment', "
                                                    r"'not_entailment'\]"):
        load_split(RTE, "train", tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stsb_scores_must_be_numbers_in_range(tmp_path, fmt):
    _write(tmp_path / "stsb", "train", fmt, [_pair("2.5"), _pair("4")])
    assert load_split(STSB, "train", tmp_path)["label"] == [2.5, 4.0]
    where = _write(tmp_path / "stsb", "train", fmt, [_pair("high")])
    with pytest.raises(GlueDataError, match=where + r" score 'high' is not a number"):
        load_split(STSB, "train", tmp_path)
    where = _write(tmp_path / "stsb", "train", fmt, [_pair(7.0)])
    with pytest.raises(GlueDataError, match=where + r" score 7.0 is outside the STS-B range 0\.\.5"):
        load_split(STSB, "train", tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_text_or_label_names_file_and_row(tmp_path, fmt):
    where = _write(tmp_path / "rte", "train", fmt, [_pair(0, s2=None)])
    with pytest.raises(GlueDataError, match=where + r" text column 'sentence2' is missing \(null\)"):
        load_split(RTE, "train", tmp_path)
    where = _write(tmp_path / "rte", "train", fmt, [_pair(None)])
    with pytest.raises(GlueDataError, match=where + r" label is missing \(null\)"):
        load_split(RTE, "train", tmp_path)


def test_json_rows_with_wrong_types_or_missing_columns(tmp_path):
    folder = tmp_path / "rte"
    _write(folder, "train", "jsonl", [_pair(0), _pair(1, s2=7)])
    with pytest.raises(GlueDataError, match=r"train\.jsonl:2: text column 'sentence2' holds 7 \(int\)"):
        load_split(RTE, "train", tmp_path)
    _write(folder, "train", "jsonl", [_pair(0), {"sentence1": "A.", "label": 0}])
    with pytest.raises(GlueDataError, match=r"train\.jsonl:2: missing column\(s\) \['sentence2'\]"):
        load_split(RTE, "train", tmp_path)
    _write(folder, "train", "jsonl", [_pair(0.5)])
    with pytest.raises(GlueDataError, match=r"train\.jsonl:1: label 0.5 is not an integer class id"):
        load_split(RTE, "train", tmp_path)
    _write(folder, "train", "jsonl", [_pair(True)])
    with pytest.raises(GlueDataError, match=r"train\.jsonl:1: label True \(bool\)"):
        load_split(RTE, "train", tmp_path)


def test_empty_files_are_named(tmp_path):
    """Was: StopIteration from the fine-tuning loop."""
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text("")
    with pytest.raises(GlueDataError, match=r"train\.jsonl: no rows \(empty file\)"):
        load_split(RTE, "train", tmp_path)
    (tmp_path / "rte" / "train.jsonl").unlink()
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("sentence1", pa.string()), ("sentence2", pa.string()), ("label", pa.int64())])
    pq.write_table(schema.empty_table(), tmp_path / "rte" / "train.parquet")
    with pytest.raises(GlueDataError, match=r"train\.parquet: no rows \(empty file\)"):
        load_split(RTE, "train", tmp_path)


def test_bad_json_names_file_and_line(tmp_path):
    """Was: a DatasetGenerationError traceback."""
    (tmp_path / "rte").mkdir()
    good = json.dumps(_pair(0))
    (tmp_path / "rte" / "train.jsonl").write_text(f"{good}\n\n{{oops\n{good}\n")
    with pytest.raises(GlueDataError, match=r"train\.jsonl:3: not valid JSON"):
        load_split(RTE, "train", tmp_path)
    (tmp_path / "rte" / "train.jsonl").unlink()
    (tmp_path / "rte" / "train.json").write_text(f"[\n{good},\n{good}\n{good}\n]\n")  # missing comma
    with pytest.raises(GlueDataError, match=r"train\.json:4: not valid JSON"):
        load_split(RTE, "train", tmp_path)
    (tmp_path / "rte" / "train.json").write_text("[" + good + "]")
    (tmp_path / "rte" / "train.parquet").write_text("not parquet")
    (tmp_path / "rte" / "train.json").unlink()
    with pytest.raises(GlueDataError, match=r"train\.parquet: not a readable parquet file"):
        load_split(RTE, "train", tmp_path)


def test_json_array_reports_the_line_of_the_bad_item(tmp_path):
    (tmp_path / "rte").mkdir()
    items = [json.dumps(_pair(0)), json.dumps(_pair(1), indent=1), json.dumps(_pair(9))]
    (tmp_path / "rte" / "train.json").write_text("[" + ",\n".join(items) + "]")
    line = 2 + json.dumps(_pair(1), indent=1).count("\n") + 1  # item 1 on line 1, item 2 from line 2
    with pytest.raises(GlueDataError, match=rf"train\.json:{line}: label 9 is outside"):
        load_split(RTE, "train", tmp_path)


def test_hub_shards_report_the_shard(tmp_path):
    _write(tmp_path / "rte", "validation-00000-of-00002", "parquet", [_pair(0)])
    _write(tmp_path / "rte", "validation-00001-of-00002", "parquet", [_pair(1), _pair(-1)])
    with pytest.raises(GlueDataError, match=r"validation-00001-of-00002\.parquet: row 2: label -1"):
        load_split(RTE, "validation", tmp_path)


@pytest.mark.parametrize("name, content", [
    ("RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tcaf\u00e9\tB.\tentailment\n"),
    ("rte/validation.jsonl", json.dumps(_pair(0)) + "\n" + json.dumps(_pair(0, s2="caf\u00e9"),
                                                                      ensure_ascii=False) + "\n"),
])
def test_non_utf8_file_names_file_and_line(tmp_path, name, content):
    """Was: a UnicodeDecodeError without the file name."""
    path = tmp_path / name
    path.parent.mkdir()
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(GlueDataError, match=rf"{path.name}:2: not UTF-8.*re-encode"):
        load_split(RTE, "validation", tmp_path)


def test_tsv_unlabeled_and_out_of_range_rows(tmp_path):
    (tmp_path / "SST-2").mkdir()
    dev = tmp_path / "SST-2" / "dev.tsv"
    dev.write_text("sentence\tlabel\nGood.\t1\nBad.\t-1\n")
    with pytest.raises(GlueDataError, match=r"dev\.tsv:3: label -1 marks an unlabeled row"):
        load_split(get_task("sst2"), "validation", tmp_path)
    dev.write_text("sentence\tlabel\nGood.\t2\n")
    with pytest.raises(GlueDataError, match=r"dev\.tsv:2: label 2 is outside 0\.\.1"):
        load_split(get_task("sst2"), "validation", tmp_path)
