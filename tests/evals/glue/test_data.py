"""Loading GLUE from the original TSV layout and from local parquet/json, with clear errors."""

import shutil

import pytest

from evals.glue.data import GlueDataError, load_split
from evals.glue.tasks import TASKS, get_task

# rows per split in tests/fixtures/glue (MNLI dev_matched has one '-' gold label, skipped)
EXPECTED = {
    "cola": {"train": 10, "validation": 6}, "sst2": {"train": 24, "validation": 8},
    "mrpc": {"train": 6, "validation": 5}, "stsb": {"train": 8, "validation": 6},
    "qqp": {"train": 6, "validation": 4}, "qnli": {"train": 4, "validation": 4},
    "rte": {"train": 5, "validation": 4}, "wnli": {"train": 4, "validation": 4},
    "mnli": {"train": 6, "validation_matched": 3, "validation_mismatched": 4},
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_fixture_task_loads_with_hub_columns(task, fixtures_dir):
    spec = get_task(task)
    for split, n in EXPECTED[task].items():
        ds = load_split(spec, split, fixtures_dir)
        assert len(ds) == n
        assert ds.column_names == [*spec.text_columns, "label"]
        for row in ds:
            assert all(isinstance(row[c], str) and row[c] for c in spec.text_columns)
            if spec.is_regression:
                assert 0.0 <= row["label"] <= 5.0
            else:
                assert row["label"] in range(spec.num_labels)


def test_labels_map_to_hub_ids(fixtures_dir):
    cola = load_split(get_task("cola"), "train", fixtures_dir)  # no header: label is column 1, text column 3
    assert cola[2] == {"sentence": "They drank the pub.", "label": 0}
    mnli = load_split(get_task("mnli"), "validation_mismatched", fixtures_dir)
    assert mnli["label"] == [2, 0, 0, 1]  # contradiction, entailment, entailment, neutral
    assert load_split(get_task("qnli"), "validation", fixtures_dir)["label"] == [0, 1, 0, 1]
    assert load_split(get_task("rte"), "train", fixtures_dir)["label"][:2] == [1, 0]  # not_entailment=1
    assert load_split(get_task("wnli"), "validation", fixtures_dir)["label"] == [0, 1, 0, 1]
    stsb = load_split(get_task("stsb"), "train", fixtures_dir)
    assert stsb["label"][1] == pytest.approx(3.8)
    mrpc = load_split(get_task("mrpc"), "train", fixtures_dir)  # BOM before 'Quality'; quotes kept verbatim
    assert mrpc[0]["label"] == 1 and '" the witness "' in mrpc[0]["sentence1"]


def test_limit_takes_the_first_rows(fixtures_dir):
    full = load_split(get_task("sst2"), "validation", fixtures_dir)
    assert load_split(get_task("sst2"), "validation", fixtures_dir, limit=3)["sentence"] == full["sentence"][:3]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hub_shard"])
def test_local_parquet_and_json_equal_the_tsv(tmp_path, fixtures_dir, fmt):
    spec = get_task("mrpc")
    root = tmp_path / "glue"
    (root / "mrpc").mkdir(parents=True)  # lower-case Hub name as folder
    for split in ("train", "validation"):
        ds = load_split(spec, split, fixtures_dir)
        if fmt == "parquet":
            ds.to_parquet(str(root / "mrpc" / f"{split}.parquet"))
        elif fmt == "jsonl":
            ds.to_json(str(root / "mrpc" / f"{split}.jsonl"))
        else:  # the file names of the Hub repository nyu-mll/glue
            ds.to_parquet(str(root / "mrpc" / f"{split}-00000-of-00001.parquet"))
    for split in ("train", "validation"):
        assert load_split(spec, split, root).to_list() == load_split(spec, split, fixtures_dir).to_list()


def test_missing_task_folder_names_the_expected_path(tmp_path):
    with pytest.raises(GlueDataError, match=r"RTE.*not found.*RTE/train.tsv"):
        load_split(get_task("rte"), "train", tmp_path)


def test_missing_split_file_names_the_expected_file(tmp_path, fixtures_dir):
    shutil.copytree(fixtures_dir / "MNLI", tmp_path / "MNLI")
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(GlueDataError, match=r"MNLI/dev_mismatched\.tsv"):
        load_split(get_task("mnli"), "validation_mismatched", tmp_path)


def test_bad_rows_name_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    bad = tmp_path / "RTE" / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tmaybe\n")
    with pytest.raises(GlueDataError, match=r"dev.tsv:3.*'maybe'"):
        load_split(get_task("rte"), "validation", tmp_path)
    bad.write_text("index\tsentence1\tlabel\n0\tA.\tentailment\n")
    with pytest.raises(GlueDataError, match=r"lacks column.*sentence2"):
        load_split(get_task("rte"), "validation", tmp_path)
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\n")
    with pytest.raises(GlueDataError, match=r"dev.tsv:2: 2 tab-separated fields"):
        load_split(get_task("rte"), "validation", tmp_path)


def test_parquet_with_wrong_columns_is_an_error(tmp_path, fixtures_dir):
    (tmp_path / "sst2").mkdir()
    load_split(get_task("sst2"), "validation", fixtures_dir).rename_column("sentence", "text") \
        .to_parquet(str(tmp_path / "sst2" / "validation.parquet"))
    with pytest.raises(GlueDataError, match=r"missing column\(s\) \['sentence'\]"):
        load_split(get_task("sst2"), "validation", tmp_path)


def test_hub_unreachable_offline_suggests_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(GlueDataError, match="--data-dir"):
        load_split(get_task("wnli"), "validation")
