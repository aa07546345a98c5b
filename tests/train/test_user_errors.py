"""Every user-caused error of launch/pretrain.py is exit code 2 with one line on stderr and no
traceback: data files, data that cannot be trained on, the config file and its values."""

import time

import pytest

import launch.pretrain as pretrain
from tests.data.conftest import synthetic_docs, write_txt

TINY = ("model: {vocab_size: 512, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
        "num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64}\n"
        "train: {max_steps: 2, batch_size: 2, micro_batch_size: 2, eval_every: 0, export_hf: false}\n"
        "logging: {progress_bar: false}\nmetrics: {enabled: false}\ncheckpoint: {every: 0}\n")


def config_file(tmp_path, files, extra="", seq_len=16, tokenizer=None):
    path = tmp_path / "run.yaml"
    tok = f"tokenizer: {str(tokenizer)!r}, " if tokenizer else ""
    path.write_text(TINY + extra + f"data: {{{tok}train_files: {files!r}, vocab_size: 400, seq_len: {seq_len}, "
                    f"val_fraction: 0.0, num_proc: 1, out_dir: {str(tmp_path / 'prepared')!r}}}\n"
                    f"run_dir: {str(tmp_path / 'run')!r}\n")
    return path


def one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if not ln.startswith("[mhc-lm] preparing")]
    assert rc == 2 and len(err) == 1, err[-20:]
    assert "Traceback" not in err[0]
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs") / "txt"
    write_txt(folder, synthetic_docs(12))
    return folder


def test_a_missing_train_file(tmp_path, capsys):
    rc = pretrain.main(["--config", str(config_file(tmp_path, [str(tmp_path / "nope.txt")]))])
    one_line_error(capsys, rc, "nope.txt")
    assert not (tmp_path / "run").exists()


def test_a_hub_name_offline_fails_in_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    rc = pretrain.main(["--config", str(config_file(tmp_path, ["someone/missing-folder"]))])
    assert time.monotonic() - t0 < 30  # datasets' HEAD retries took about a minute
    one_line_error(capsys, rc, "someone/missing-folder", "HF_HUB_OFFLINE")


def test_no_network_fails_in_seconds_without_the_offline_flag(tmp_path, monkeypatch):
    import socket

    from mhc_lm.data.config import DataConfig
    from mhc_lm.data.sources import load_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ValueError, match="huggingface.co cannot be reached"):
        load_hub("owner/name", DataConfig())


def test_damaged_data_and_a_corpus_shorter_than_one_window(tmp_path, capsys, docs_dir):
    cfg = config_file(tmp_path, [str(docs_dir / "*.txt")])
    assert pretrain.main(["--config", str(cfg)]) == 0
    capsys.readouterr()
    prepared = tmp_path / "prepared"
    # a truncated shard
    shard = next(prepared.glob("train_*.bin"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    rc = pretrain.main(["--config", str(cfg), "run_dir=" + str(tmp_path / "run2")])
    one_line_error(capsys, rc, "data:", shard.name)
    shard.write_bytes(data)
    # a corpus shorter than one window (tokenized with the tokenizer prepared above)
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "tiny.txt").write_text("a few words only")
    short = config_file(tmp_path / "short", [str(tmp_path / "short" / "tiny.txt")], seq_len=64,
                        tokenizer=prepared / "tokenizer")
    rc = pretrain.main(["--config", str(short)])
    one_line_error(capsys, rc, "data:", "fewer than one global batch")
    # a garbage tokenizer
    for f in (prepared / "tokenizer").iterdir():
        if f.is_file():
            f.write_bytes(b"\x00garbage\xff" * 10)
    rc = pretrain.main(["--config", str(cfg), "run_dir=" + str(tmp_path / "run3")])
    one_line_error(capsys, rc, "data:", "is not the tokenizer the shards")
    # a garbage tokenizer given as data.tokenizer
    (tmp_path / "g").mkdir()
    garbage = config_file(tmp_path / "g", [str(docs_dir / "*.txt")], tokenizer=prepared / "tokenizer")
    rc = pretrain.main(["--config", str(garbage)])
    one_line_error(capsys, rc, "data:", "could not be loaded as a Hugging Face tokenizer")


@pytest.mark.parametrize("override,words", [
    ("optim.lr=inf", ["optim.lr"]), ("optim.lr=1e39", ["optim.lr", "float32"]),
    ("metrics.spike_sigma=nan", ["metrics.spike_sigma"])])
def test_config_values(tmp_path, capsys, override, words):
    rc = pretrain.main(["--config", str(config_file(tmp_path, ["x.txt"])), override])
    one_line_error(capsys, rc, *words)


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    rc = pretrain.main(["--config", str(empty), f"run_dir={tmp_path / 'run'}"])
    one_line_error(capsys, rc, "empty")
    assert not (tmp_path / "run").exists()


def test_a_corrupt_data_meta_json_says_corrupt(tmp_path):
    from mhc_lm.data import prepare_data
    from tests.data.conftest import small_config

    write_txt(tmp_path / "txt", synthetic_docs(12))
    out = prepare_data(small_config(tmp_path), progress=False)
    (out / "meta.json").write_text('{"fingerprint_inputs": {"sour')  # torn by a crash or a full disk
    with pytest.raises(ValueError, match="meta.json is corrupt") as err:
        prepare_data(small_config(tmp_path), progress=False)
    assert "different config" not in str(err.value)
    assert prepare_data(small_config(tmp_path, overwrite=True), progress=False) == out  # the fix it names works
