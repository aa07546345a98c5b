"""launch/prepare_data.py: YAML `data` section + dotted overrides, errors as exit code 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from .conftest import write_txt

ROOT = Path(__file__).resolve().parents[2]


def load_cli():
    spec = importlib.util.spec_from_file_location("prepare_data_cli", ROOT / "launch" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_config_and_overrides(tmp_path, corpus_docs, capsys):
    cli = load_cli()
    write_txt(tmp_path / "txt", corpus_docs[:12])
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {hidden_size: 64}\n"  # other sections of a run config are ignored
        f"data:\n  train_files: ['{tmp_path}/txt/*.txt']\n  vocab_size: 999\n  num_proc: 1\n"
        f"  out_dir: {tmp_path}/out\n"
    )
    rc = cli.main(["--config", str(config), "--quiet", "data.vocab_size=410", "val_fraction=0.25", "train.max_steps=3"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 410 and summary["val_documents"] == 3
    assert summary["special_token_ids"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}

    assert cli.main(["--config", str(config), "--quiet", "data.vocab_sise=410"]) == 2
    assert "vocab_sise" in capsys.readouterr().err
    assert cli.main(["--quiet", f"data.train_files={tmp_path}/none/*.txt", f"data.out_dir={tmp_path}/x"]) == 2
    assert "no file matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--help"])


def test_cli_overwrite_does_not_delete_a_docs_folder(tmp_path, corpus_docs, capsys):
    """`data.out_dir=docs data.overwrite=true` is refused; the error does not suggest overwrite."""
    cli = load_cli()
    write_txt(tmp_path / "txt", corpus_docs[:12])
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("data.md", "training.md"):
        (docs / name).write_text(f"# {name}")
    args = ["--quiet", f"data.train_files=['{tmp_path}/txt/*.txt']", "data.vocab_size=400", f"data.out_dir={docs}"]
    for extra in ([], ["data.overwrite=true"]):
        assert cli.main(args + extra) == 2
        err = capsys.readouterr().err
        assert str(docs) in err and "not a prepared data folder" in err and "data.md" in err
        assert "to replace it" not in err
    assert sorted(p.name for p in docs.iterdir()) == ["data.md", "training.md"]
