"""prepare_data: input formats, whole-document split, reuse, and every bad input failing cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from pathlib import Path

import numpy as np
import pytest

from mhc_lm.data import PackedTokens, check_compatible, load_tokenizer, prepare_data, read_meta
from mhc_lm.data import prepare as prepare_module
from mhc_lm.data import staging
from mhc_lm.data.shards import choose_dtype
from mhc_lm.data.sources import split_indices

from .conftest import small_config, synthetic_docs, write_txt


def leftovers(folder):
    """Anything prepare_data may leave in the parent of out_dir besides the inputs."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("txt", "in"))


def test_validation_split_is_whole_documents_and_deterministic():
    train, val = split_indices(100, 0.1, seed=4)
    assert len(val) == 10 and len(train) == 90
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    assert np.array_equal(val, split_indices(100, 0.1, seed=4)[1])
    assert not np.array_equal(val, split_indices(100, 0.1, seed=5)[1])
    assert len(split_indices(3, 0.01, seed=0)[1]) == 1  # at least one held-out document
    with pytest.raises(ValueError, match="val_fraction=0"):
        split_indices(1, 0.1, seed=0)


def test_val_split_holds_exactly_the_held_out_documents(prepared, corpus_docs):
    out_dir, cfg = prepared
    tok = load_tokenizer(out_dir)
    _, val_idx = split_indices(len(corpus_docs), cfg.val_fraction, cfg.seed)
    val = PackedTokens(out_dir, "val")
    text = tok.decode(val[0 : len(val)].tolist())
    assert text == "".join(corpus_docs[i] + tok.eos_token for i in val_idx)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_tabular_formats_with_a_text_column(tmp_path, fmt):
    import datasets

    docs = synthetic_docs(24, seed=1)
    (tmp_path / "in").mkdir()
    table = datasets.Dataset.from_dict({"id": list(range(len(docs))), "body": docs})
    path = tmp_path / "in" / f"corpus.{fmt}"
    {"jsonl": table.to_json, "csv": table.to_csv, "parquet": table.to_parquet}[fmt](str(path))
    cfg = small_config(tmp_path, train_files=[str(path)], text_column="body", val_fraction=0.0)
    out_dir = prepare_data(cfg, progress=False)
    tok = load_tokenizer(out_dir)
    ds = PackedTokens(out_dir, "train")
    assert ds.num_documents == len(docs)
    assert tok.decode(ds[0 : len(ds)].tolist()) == "".join(d + tok.eos_token for d in docs)

    bad = small_config(tmp_path, train_files=[str(path)], text_column="content", out_dir=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"no column 'content'.*data.text_column"):
        prepare_data(bad, progress=False)
    assert not (tmp_path / "bad").exists()


def test_reuse_refuse_and_overwrite(tmp_path, corpus_docs):
    write_txt(tmp_path / "txt", corpus_docs[:16])
    cfg = small_config(tmp_path)
    out_dir = prepare_data(cfg, progress=False)
    stamp = (out_dir / "meta.json").stat().st_mtime_ns
    assert prepare_data(cfg, progress=False) == out_dir
    assert (out_dir / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(FileExistsError, match=r"vocab_size.*data.overwrite=true"):
        prepare_data(small_config(tmp_path, vocab_size=420), progress=False)
    assert (out_dir / "meta.json").stat().st_mtime_ns == stamp
    prepare_data(small_config(tmp_path, vocab_size=420, overwrite=True), progress=False)
    assert read_meta(out_dir)["vocab_size"] == 420
    assert leftovers(tmp_path) == ["prepared"]


@pytest.mark.parametrize("case", ["no_match", "empty_files", "unknown_format", "missing_path"])
def test_bad_input_fails_before_writing_anything(tmp_path, case):
    (tmp_path / "in").mkdir()
    if case == "no_match":
        files, match = [str(tmp_path / "in" / "*.txt")], "no file matches"
    elif case == "empty_files":
        for i in range(3):
            (tmp_path / "in" / f"e{i}.txt").write_text("")
        files, match = [str(tmp_path / "in" / "*.txt")], "no non-empty documents"
    elif case == "unknown_format":
        (tmp_path / "in" / "corpus.docx").write_text("text")
        files, match = [str(tmp_path / "in" / "corpus.docx")], r"unknown format '.docx'"
    else:
        files, match = [str(tmp_path / "in" / "nope.txt")], "neither an existing file"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        prepare_data(small_config(tmp_path, train_files=files), progress=False)
    assert leftovers(tmp_path) == []


def test_interrupted_prepare_leaves_nothing_and_keeps_the_old_folder(tmp_path, corpus_docs, monkeypatch):
    write_txt(tmp_path / "txt", corpus_docs[:16])
    out_dir = prepare_data(small_config(tmp_path), progress=False)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}

    real = prepare_module._write_split

    def crash_on_val(ds, name, *args, **kwargs):
        if name == "val":
            raise KeyboardInterrupt("simulated interrupt")
        return real(ds, name, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "_write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(small_config(tmp_path, vocab_size=420, overwrite=True), progress=False)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()} == before
    with pytest.raises(KeyboardInterrupt):
        prepare_data(small_config(tmp_path, out_dir=str(tmp_path / "fresh")), progress=False)
    assert leftovers(tmp_path) == ["prepared"]


def test_damaged_shards_and_swapped_tokenizer_are_detected(prepared, tmp_path):
    out_dir = tmp_path / "copy"
    shutil.copytree(prepared[0], out_dir)
    meta = read_meta(out_dir)
    shard = out_dir / meta["splits"]["train"]["shards"][0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])  # one uint16 token short
    with pytest.raises(ValueError, match=r"train_00000.bin has \d+ bytes but meta.json records"):
        PackedTokens(out_dir, "train")
    with pytest.raises(ValueError, match="damaged"):
        prepare_data(prepared[1].__class__(**{**prepared[1].__dict__, "out_dir": str(out_dir)}), progress=False)
    shard.write_bytes(data)
    PackedTokens(out_dir, "train")  # repaired
    edited = {**meta, "vocab_size": 70_000}  # a meta.json claiming a vocab its uint16 shards cannot hold
    (out_dir / "meta.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"meta.json.*does not fit data.token_dtype=uint16"):
        PackedTokens(out_dir, "train")
    (out_dir / "meta.json").write_text(json.dumps(meta))
    tok_json = out_dir / "tokenizer" / "tokenizer.json"
    tok_json.write_text(tok_json.read_text().replace('"<unk>"', '"<UNK>"'))
    with pytest.raises(ValueError, match="not the tokenizer the shards"):
        PackedTokens(out_dir, "train")


def test_check_compatible_names_the_fix(prepared):
    out_dir, _ = prepared
    ds = PackedTokens(out_dir, "train")
    check_compatible(ds, model_vocab_size=ds.vocab_size)
    check_compatible(out_dir, model_vocab_size=ds.vocab_size + 100, eos_token_id=2)
    with pytest.raises(ValueError, match=rf"vocab_size >= {ds.vocab_size}"):
        check_compatible(ds, model_vocab_size=ds.vocab_size - 1)
    with pytest.raises(ValueError, match="eos_token_id=2"):
        check_compatible(ds.meta, model_vocab_size=ds.vocab_size, eos_token_id=5)


def _big_vocab_tokenizer(folder, size=70_000):
    """An HF word-level tokenizer whose ids pass 65535: only uint32 shards can hold them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(size - 2)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(str(folder))
    return folder


def test_existing_tokenizer_and_dtype_limits(tmp_path):
    assert choose_dtype(65536) == "uint16" and choose_dtype(65537) == "uint32"
    tok_dir = _big_vocab_tokenizer(tmp_path / "bigtok")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("w1 w69997 w65536 w5")
    (tmp_path / "in" / "b.txt").write_text("w70000 w3")  # w70000 is unknown -> <unk>
    files = [str(tmp_path / "in" / "*.txt")]
    with pytest.raises(ValueError, match=r"does not fit data.token_dtype=uint16.*uint32"):
        prepare_data(small_config(tmp_path, train_files=files, tokenizer=str(tok_dir), token_dtype="uint16",
                                  val_fraction=0.0, vocab_size=None), progress=False)
    assert leftovers(tmp_path) == ["bigtok"]
    out_dir = prepare_data(small_config(tmp_path, train_files=files, tokenizer=str(tok_dir), val_fraction=0.0,
                                        vocab_size=None), progress=False)
    meta = read_meta(out_dir)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    ds = PackedTokens(out_dir, "train")
    assert ds[0 : len(ds)].tolist() == [3, 69999, 65538, 7, 1, 0, 5, 1]
    with pytest.raises(ValueError, match="vocab_size >= 70000"):
        check_compatible(ds, model_vocab_size=65536)


def test_streamed_hub_dataset_path_offline(tmp_path, corpus_docs, monkeypatch):
    """A Hub name is streamed; here the stream is a local IterableDataset (no network in tests)."""
    import datasets

    from mhc_lm.data.sources import is_val_document

    docs = corpus_docs[:30]
    seen = {}

    def fake_load_hub(name, cfg):
        seen["name"] = name
        return datasets.Dataset.from_dict({"text": docs}).to_iterable_dataset()

    monkeypatch.setattr(prepare_module, "load_hub", fake_load_hub)
    cfg = small_config(tmp_path, train_files=["someone/some-corpus"], val_fraction=0.2)
    out_dir = prepare_data(cfg, progress=False)
    assert seen["name"] == "someone/some-corpus"
    assert read_meta(out_dir)["sources"]["train"]["hub"] == "someone/some-corpus"
    tok = load_tokenizer(out_dir)
    is_val = [is_val_document(i, 0.2, cfg.seed) for i in range(len(docs))]
    assert 0 < sum(is_val) < len(docs)
    for split, want in (("train", False), ("val", True)):
        ds = PackedTokens(out_dir, split)
        expected = "".join(d + tok.eos_token for d, v in zip(docs, is_val) if v == want)
        assert tok.decode(ds[0 : len(ds)].tolist()) == expected


def test_streamed_hub_train_with_local_val_files(tmp_path, corpus_docs, monkeypatch):
    """data.val_files with a Hub stream: val is the local files, the whole stream is train."""
    import datasets

    train_docs, val_docs = corpus_docs[:20], corpus_docs[20:24]
    monkeypatch.setattr(prepare_module, "load_hub",
                        lambda name, cfg: datasets.Dataset.from_dict({"text": train_docs}).to_iterable_dataset())
    write_txt(tmp_path / "val", val_docs)
    cfg = small_config(tmp_path, train_files=["someone/some-corpus"], val_files=[str(tmp_path / "val")],
                       val_fraction=0.2)
    out_dir = prepare_data(cfg, progress=False)
    tok = load_tokenizer(out_dir)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ds = PackedTokens(out_dir, split)
        assert sorted(tok.decode(ds[0 : len(ds)].tolist()).split(tok.eos_token)[:-1]) == sorted(docs)


def test_parallel_tokenization_gives_identical_shards(tmp_path, corpus_docs):
    write_txt(tmp_path / "txt", corpus_docs)
    one = prepare_data(small_config(tmp_path, out_dir=str(tmp_path / "p1"), num_proc=1), progress=False)
    two = prepare_data(small_config(tmp_path, out_dir=str(tmp_path / "p2"), num_proc=2), progress=False)
    for split in ("train", "val"):
        a, b = PackedTokens(one, split), PackedTokens(two, split)
        assert np.array_equal(a[0 : len(a)], b[0 : len(b)]) and a.num_documents == b.num_documents
    assert read_meta(one)["tokenizer"]["sha256"] == read_meta(two)["tokenizer"]["sha256"]


def test_missing_folder_read_as_hub_name_fails_clearly_offline(tmp_path):
    cfg = small_config(tmp_path, train_files=["no_such_dir"], out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"read as a Hub dataset.*local folders must exist"):
        prepare_data(cfg, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_publish_race_keeps_the_first_complete_folder(tmp_path, corpus_docs):
    """Two ranks preparing at once: the second finds the same preparation published and keeps it."""
    write_txt(tmp_path / "txt", corpus_docs[:12])
    cfg = small_config(tmp_path)
    out_dir = prepare_data(cfg, progress=False)
    inode = out_dir.stat().st_ino
    late = tmp_path / ".prepared.partial-late"
    shutil.copytree(out_dir, late)
    prepare_module._publish(late, out_dir, prepare_module._fingerprint_inputs(cfg))
    assert out_dir.stat().st_ino == inode and late.exists()  # caller's finally removes its staging
    PackedTokens(out_dir, "train")


def test_overwrite_never_deletes_a_folder_prepare_data_did_not_write(tmp_path, corpus_docs):
    """data.overwrite=true replaces an earlier preparation or an empty folder, nothing else."""
    write_txt(tmp_path / "txt", corpus_docs[:12])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# notes")
    only_tok = tmp_path / "only_tok"
    (only_tok / "tokenizer").mkdir(parents=True)
    (only_tok / "tokenizer" / "tokenizer.json").write_text("{}")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for target in (docs, only_tok, a_file):
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match="is not a prepared data folder.*never replaced") as err:
                prepare_data(small_config(tmp_path, out_dir=str(target), overwrite=overwrite), progress=False)
            assert str(target) in str(err.value) and "to replace it" not in str(err.value)
    assert (docs / "guide.md").read_text() == "# notes" and (only_tok / "tokenizer" / "tokenizer.json").is_file()
    assert a_file.read_text() == "keep me"

    out_dir = prepare_data(small_config(tmp_path, out_dir=str(tmp_path / "prep")), progress=False)
    (out_dir / "NOTES.md").write_text("mine")  # a user file in an earlier preparation
    with pytest.raises(FileExistsError, match=r"NOTES.md.*never replaced"):
        prepare_data(small_config(tmp_path, out_dir=str(out_dir), vocab_size=420, overwrite=True), progress=False)
    assert (out_dir / "NOTES.md").read_text() == "mine" and read_meta(out_dir)["vocab_size"] == 400
    assert prepare_data(small_config(tmp_path, out_dir=str(out_dir)), progress=False) == out_dir  # reuse is fine
    (out_dir / "NOTES.md").unlink()
    prepare_data(small_config(tmp_path, out_dir=str(out_dir), vocab_size=420, overwrite=True), progress=False)
    assert read_meta(out_dir)["vocab_size"] == 420

    (tmp_path / "empty").mkdir()
    prepare_data(small_config(tmp_path, out_dir=str(tmp_path / "empty")), progress=False)
    assert read_meta(tmp_path / "empty")["vocab_size"] == 400


def test_tokenizer_with_another_data_vocab_size_is_an_error(tmp_path):
    tok_dir = _big_vocab_tokenizer(tmp_path / "tok", size=1000)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("w1 w2 w3 w997")
    files = [str(tmp_path / "in" / "*.txt")]
    with pytest.raises(ValueError, match=r"has a vocabulary of 1000 tokens but data.vocab_size=4096.*only sets "
                                         r"the size of a tokenizer trained when data.tokenizer is unset"):
        prepare_data(small_config(tmp_path, train_files=files, tokenizer=str(tok_dir), vocab_size=4096,
                                  val_fraction=0.0, out_dir=str(tmp_path / "a")), progress=False)
    assert not (tmp_path / "a").exists()
    for name, vocab in (("b", None), ("c", 1000)):  # unset, or equal to the tokenizer's: fine
        out_dir = prepare_data(small_config(tmp_path, train_files=files, tokenizer=str(tok_dir), vocab_size=vocab,
                                            val_fraction=0.0, out_dir=str(tmp_path / name)), progress=False)
        assert read_meta(out_dir)["vocab_size"] == 1000
    with pytest.raises(ValueError, match=r"vocab_size >= 1000, or re-prepare the data with a tokenizer of at most "
                                         r"512 tokens in place of data.tokenizer=") as err:
        check_compatible(out_dir, model_vocab_size=512)
    assert "data.vocab_size" not in str(err.value)


def _partial(tmp_path, name):
    path = tmp_path / name
    (path / "cache").mkdir(parents=True)
    (path / "cache" / "x.arrow").write_bytes(b"0" * 10)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partial_folders_are_removed_only_when_their_writer_is_gone(tmp_path):
    out_dir = tmp_path / "prepared"
    host, dead, alive = staging._host_tag(), _dead_pid(), os.getppid()
    stale = [_partial(tmp_path, f".prepared.partial-{host}-{dead}-0123abcd")]
    keep = [_partial(tmp_path, f".prepared.partial-{host}-{alive}-0123abcd"),  # writer still runs
            _partial(tmp_path, f".prepared.partial-otherhost-{dead}-0123abcd"),  # maybe running elsewhere
            _partial(tmp_path, f".prepared.partial-{dead}-0123abcd"),  # old name without host, recent
            _partial(tmp_path, f".other.partial-{host}-{dead}-0123abcd"),  # another target
            _partial(tmp_path, ".prepared.partial-late")]  # not a name prepare_data makes
    old = [_partial(tmp_path, f".prepared.partial-otherhost-{alive}-4567abcd"),
           _partial(tmp_path, f".prepared.partial-{alive}-4567abcd")]
    two_days_ago = time.time() - 2 * 86400
    for path in old:
        for p in [path, *path.rglob("*")]:
            os.utime(p, (two_days_ago, two_days_ago))
    assert sorted(staging.remove_stale_partials(out_dir)) == sorted(stale + old)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale + old)


KILLED_PREPARE = """
import os, signal, sys
from mhc_lm.data import prepare as prepare_module
from mhc_lm.data import staging
from tests.data.conftest import small_config
from pathlib import Path
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
prepare_module._write_split = die
prepare_module.prepare_data(small_config(Path(sys.argv[1])), progress=False)
"""


def test_prepare_after_sigkill_removes_the_partial_folder(tmp_path, corpus_docs):
    write_txt(tmp_path / "txt", corpus_docs[:12])
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", KILLED_PREPARE, str(tmp_path)], cwd=root, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len([p for p in leftovers(tmp_path) if ".partial-" in p]) == 1
    prepare_data(small_config(tmp_path), progress=False)
    assert leftovers(tmp_path) == ["prepared"]
