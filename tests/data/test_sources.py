"""Reading sources: mixed formats, val_files errors, rows without text, compression, error causes, path reuse."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import os

import pytest

from mhc_lm.data import DataConfig, PackedTokens, load_tokenizer, prepare_data, read_meta
from mhc_lm.data.sources import load_local, resolve_files

from .conftest import small_config, synthetic_docs, write_txt


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name not in ("txt", "in"))


def decoded_documents(out_dir, split="train") -> list[str]:
    tok = load_tokenizer(out_dir)
    ds = PackedTokens(out_dir, split)
    text = tok.decode(ds[0 : len(ds)].tolist())
    assert text.endswith(tok.eos_token)
    return text.split(tok.eos_token)[:-1]


def write_rows(path, rows: list[dict]) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(lines)


def test_every_supported_format_mixes_in_one_prepare(tmp_path):
    import datasets

    docs = synthetic_docs(13, seed=3, words_per_doc=(40, 80))
    d = tmp_path / "in"
    d.mkdir()
    files = []
    for i, ext in enumerate(["txt", "md", "text"]):
        (d / f"a{i}.{ext}").write_text(docs[i], encoding="utf-8")
        files.append(d / f"a{i}.{ext}")
    with gzip.open(d / "a3.txt.gz", "wt", encoding="utf-8") as f:
        f.write(docs[3])
    files.append(d / "a3.txt.gz")
    write_rows(d / "b.jsonl", [{"text": docs[4], "id": 1}, {"text": docs[5], "id": 2}])
    write_rows(d / "c.json", [{"text": docs[6]}])
    write_rows(d / "d.jsonl.gz", [{"text": docs[7]}])
    datasets.Dataset.from_dict({"n": [1, 2], "text": docs[8:10]}).to_csv(str(d / "e.csv"))
    with bz2.open(d / "f.csv.bz2", "wt", encoding="utf-8") as f:
        f.write(datasets.Dataset.from_dict({"text": docs[10:11]}).to_pandas().to_csv(index=False))
    datasets.Dataset.from_dict({"text": docs[11:13], "x": [0.5, 1.5]}).to_parquet(str(d / "g.parquet"))
    files += [d / n for n in ("b.jsonl", "c.json", "d.jsonl.gz", "e.csv", "f.csv.bz2", "g.parquet")]

    cfg = small_config(tmp_path, train_files=[str(f) for f in files], val_fraction=0.0)
    out_dir = prepare_data(cfg, progress=False)
    assert PackedTokens(out_dir, "train").num_documents == len(docs)
    assert sorted(decoded_documents(out_dir)) == sorted(docs)


@pytest.mark.parametrize("spec", ["valdir", "my/valdir", "nope.txt"])
def test_missing_val_files_name_the_key_and_path(tmp_path, corpus_docs, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    write_txt(tmp_path / "txt", corpus_docs[:6])
    cfg = small_config(tmp_path, val_files=[spec])
    with pytest.raises(FileNotFoundError, match=rf"data\.val_files: '{spec}' does not exist .*{tmp_path / spec}"):
        prepare_data(cfg, progress=False)
    assert leftovers(tmp_path) == []


def test_rows_without_text_are_counted_and_csv_text_is_kept_as_written(tmp_path, corpus_docs):
    d = tmp_path / "in"
    d.mkdir()
    write_rows(d / "rows.jsonl", [{"text": "hello"}, {"text": None}, {"other": 1}, {"text": 5},
                                  {"text": "x"}, {"text": 2.5}])
    (d / "na.csv").write_text('text,id\nNA,1\nnull,2\nNone,3\nN/A,4\nok,5\n,6\n"007",7\n')
    (d / "num.csv").write_text("text\n1\n2.50\n")
    cfg = DataConfig(vocab_size=400)
    with pytest.warns(UserWarning, match=r"rows\.jsonl: skipped 2 row\(s\) whose 'text' is missing or null"):
        report: dict = {}
        ds = load_local([str(d / "rows.jsonl")], cfg, str(tmp_path / "cache"), report=report)
    assert ds["text"] == ["hello", "5", "x", "2.5"] and report == {"rows_without_text": 2}
    assert load_local([str(d / "na.csv")], cfg, str(tmp_path / "cache"))["text"] == \
        ["NA", "null", "None", "N/A", "ok", "007"]  # the empty field is an empty document: dropped
    assert load_local([str(d / "num.csv")], cfg, str(tmp_path / "cache"))["text"] == ["1", "2.50"]

    write_txt(tmp_path / "txt", corpus_docs[:6])
    cfg = small_config(tmp_path, train_files=[str(tmp_path / "txt" / "*.txt"), str(d / "rows.jsonl")],
                       val_fraction=0.0)
    with pytest.warns(UserWarning, match="rows.jsonl"):
        out_dir = prepare_data(cfg, progress=False)
    assert read_meta(out_dir)["rows_without_text"] == {"data.train_files": 2}
    assert PackedTokens(out_dir, "train").num_documents == 6 + 4


@pytest.mark.parametrize("name,match", [
    ("c.parquet.gz", r"parquet files are compressed internally.*pass the \.parquet file"),
    ("c.jsonl.zst", r"needs the 'zstandard' package.*pip install zstandard"),
    ("c.txt.lz4", r"needs the 'lz4' package.*pip install lz4"),
])
def test_unreadable_compression_is_refused_before_reading(tmp_path, name, match):
    if name.endswith((".zst", ".lz4")) and importlib.util.find_spec("zstandard" if name.endswith(".zst") else "lz4"):
        pytest.skip("the compression package is installed")
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / name
    path.write_bytes(b"not really compressed")
    with pytest.raises(ValueError, match=match):
        resolve_files([str(path)])
    with pytest.raises(ValueError, match=rf"data\.val_files: {path}"):
        resolve_files([str(tmp_path / "in" / "*")], "data.val_files", allow_hub=False)
    with pytest.raises(ValueError, match=match):
        prepare_data(small_config(tmp_path, train_files=[str(path)]), progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["latin1_txt", "latin1_jsonl", "empty_jsonl"])
def test_read_errors_name_the_file_and_the_cause(tmp_path, case):
    (tmp_path / "in").mkdir()
    if case == "latin1_txt":
        path = tmp_path / "in" / "old.txt"
        path.write_bytes("café".encode("latin-1"))
        match = rf"{path}.*UnicodeDecodeError: 'utf-8' codec can't decode.*convert the file to UTF-8"
    elif case == "latin1_jsonl":
        path = tmp_path / "in" / "old.jsonl"
        path.write_bytes('{"text": "café"}\n'.encode("latin-1"))
        match = rf"{path}.*'utf-8' codec can't decode.*convert the file to UTF-8"
    else:
        path = tmp_path / "in" / "empty.jsonl"
        path.write_text("")
        match = rf"{path}: no non-empty documents"
    with pytest.raises(ValueError, match=match):
        prepare_data(small_config(tmp_path, train_files=[str(path)]), progress=False)
    assert leftovers(tmp_path) == []


def test_relative_and_absolute_paths_of_the_same_files_reuse_the_preparation(tmp_path, corpus_docs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_txt(tmp_path / "txt", corpus_docs[:8])
    (tmp_path / "val.txt").write_text(corpus_docs[8], encoding="utf-8")
    out_dir = prepare_data(small_config(tmp_path, train_files=["txt/*.txt"], val_files=["val.txt"]), progress=False)
    stamp = (out_dir / "meta.json").stat().st_mtime_ns
    absolute = small_config(tmp_path, train_files=[str(tmp_path / "txt" / "*.txt")],
                            val_files=[str(tmp_path / "val.txt")])
    assert prepare_data(absolute, progress=False) == out_dir
    assert (out_dir / "meta.json").stat().st_mtime_ns == stamp
    assert read_meta(out_dir)["config"]["train_files"] == ["txt/*.txt"]  # what is stored is unchanged
    os.utime(tmp_path / "val.txt", ns=(stamp, stamp + 10**9))  # a changed input is still a difference
    with pytest.raises(FileExistsError, match=r"differs in: \['sources'\]"):
        prepare_data(absolute, progress=False)
