"""launch/export_hf.py --out never deletes what an export did not write: the run directory, a folder
above it, its checkpoints/, a user's folder or file are refused (exit code 2, nothing deleted); an
earlier export (default RUN/hf, with or without its marker) is still replaced."""

import importlib.util
import json
from pathlib import Path

import pytest

from mhc_lm.train import BaseCallback, Trainer
from mhc_lm.train.export import ExportTargetError, check_export_target, is_hf_export
from tests.train.helpers import one_thread, tiny_config, toy_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("export_hf", REPO / "launch" / "export_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run with its end-of-training export (run/hf, published at the top)."""
    cfg = tiny_config(tmp_path_factory.mktemp("runs") / "acopy", "mhc", train={"export_hf": True, "max_steps": 4})
    with one_thread():  # module scope: set up before the per-test one-thread fixture
        Trainer(cfg, data=toy_data(cfg)).fit()
    return Path(cfg.run_dir)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (and the content of its files), to assert that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def refused(cli, capsys, run: Path, out: str, named: Path) -> str:
    assert cli([str(run), "--out", out]) == 2
    err = capsys.readouterr().err
    assert str(named) in err, err
    return err


def test_end_of_training_export_is_marked_and_not_published(run_dir):
    hf = run_dir / "hf"
    listed = json.loads((hf / ".hf_export.json").read_text())["files"]
    assert "model.safetensors" in listed and ".hf_export.json" not in listed
    assert sorted(p.name for p in hf.iterdir() if p.name != ".hf_export.json") == listed
    assert is_hf_export(hf) and not (run_dir / ".hf_export.json").exists()
    assert not (run_dir / "hf.tmp").exists()


def test_cli_refuses_a_folder_with_other_files(run_dir, cli, capsys, tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "sub" / "data.txt").write_text("data")
    before = tree(out)
    err = refused(cli, capsys, run_dir, str(out), out)
    assert "notes.txt" in err and "not an earlier export" in err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no mine.tmp left behind


def test_cli_refuses_the_run_dir_its_parents_and_checkpoints(run_dir, cli, capsys, monkeypatch):
    before = tree(run_dir.parent)
    refused(cli, capsys, run_dir, str(run_dir), run_dir)
    refused(cli, capsys, run_dir, str(run_dir.parent), run_dir.parent)
    ckpts = run_dir / "checkpoints"
    refused(cli, capsys, run_dir, str(ckpts), ckpts)
    refused(cli, capsys, run_dir, str(ckpts / "hf"), ckpts / "hf")
    monkeypatch.chdir(run_dir)  # --out . is resolved to the absolute path first
    err = refused(cli, capsys, Path("."), ".", run_dir.resolve())
    assert "run directory" in err
    monkeypatch.chdir(run_dir.parent)
    refused(cli, capsys, Path(run_dir.name), f"{run_dir.name}/../{run_dir.name}", run_dir.resolve())
    assert tree(run_dir.parent) == before


def test_cli_refuses_a_file_and_a_path_under_a_file(run_dir, cli, capsys, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# mine\n")
    err = refused(cli, capsys, run_dir, str(readme), readme)
    assert "is an existing file" in err
    refused(cli, capsys, run_dir, str(readme / "hf"), readme)
    assert readme.read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no README.md.tmp/


def test_cli_refuses_the_current_directory_and_a_foreign_tmp_folder(run_dir, cli, capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert "current directory" in refused(cli, capsys, run_dir, ".", empty)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.tmp").mkdir()
    (tmp_path / "m.tmp" / "notes.txt").write_text("mine")
    refused(cli, capsys, run_dir, "m", tmp_path / "m.tmp")
    assert (tmp_path / "m.tmp" / "notes.txt").read_text() == "mine" and not (tmp_path / "m").exists()


def test_an_earlier_export_is_replaced(run_dir, cli, capsys, tmp_path):
    out = tmp_path / "export"
    assert cli([str(run_dir), "--out", str(out)]) == 0
    weights = (out / "model.safetensors").read_bytes()
    (out / "stale.py").write_text("from an earlier export")  # listed below as an export's file
    marker = json.loads((out / ".hf_export.json").read_text())
    (out / ".hf_export.json").write_text(json.dumps({"files": [*marker["files"], "stale.py"]}))
    assert cli([str(run_dir), "--out", str(out)]) == 0
    assert not (out / "stale.py").exists() and (out / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no export.tmp, no moved-aside copy
    (out / "notes.txt").write_text("added by the user")  # now it holds a file no export wrote
    refused(cli, capsys, run_dir, str(out), out)
    assert (out / "notes.txt").read_text() == "added by the user"


def test_default_export_is_replaced_and_republished(run_dir, cli, capsys):
    top = run_dir / "model.safetensors"
    assert cli([str(run_dir)]) == 0  # default --out: RUN/hf
    assert str((run_dir / "hf").resolve()) in capsys.readouterr().out
    assert top.stat().st_ino == (run_dir / "hf" / "model.safetensors").stat().st_ino
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert not (run_dir / "hf.tmp").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".hf.old")]


def test_export_without_marker_is_still_replaced(run_dir, tmp_path):
    """Exports written before the marker: recognised by the files save_pretrained writes."""
    out = tmp_path / "old"
    check_export_target(out)
    from mhc_lm.train.export import export_run_dir

    export_run_dir(run_dir, out)
    (out / ".hf_export.json").unlink()
    assert is_hf_export(out)
    export_run_dir(run_dir, out)
    assert (out / ".hf_export.json").is_file()
    (out / ".hf_export.json").unlink()
    (out / "notes.txt").write_text("mine")
    assert not is_hf_export(out)
    with pytest.raises(ExportTargetError, match="not an earlier export"):
        export_run_dir(run_dir, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_an_interrupted_export_is_cleaned_up(run_dir, tmp_path):
    from mhc_lm.train.export import export_run_dir

    tmp = tmp_path / "out.tmp"
    tmp.mkdir()
    (tmp / ".hf_export.json").write_text(json.dumps({"files": None}))  # written first by every export
    (tmp / "config.json").write_text("{")
    export_run_dir(run_dir, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


class NotesInHf(BaseCallback):
    """The user's notes appear in run/hf during training (before the end-of-training export)."""

    def on_train_end(self, trainer):
        (trainer.run_dir / "hf").mkdir()
        (trainer.run_dir / "hf" / "notes.txt").write_text("mine")


def test_trainer_refuses_a_foreign_hf_folder(tmp_path):
    cfg = tiny_config(tmp_path / "run", "standard", train={"export_hf": True, "max_steps": 4})
    with pytest.raises(ExportTargetError, match="notes.txt"):
        Trainer(cfg, data=toy_data(cfg), callbacks=[NotesInHf()]).fit()
    hf = tmp_path / "run" / "hf"
    assert [p.name for p in hf.iterdir()] == ["notes.txt"] and (hf / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "run" / "hf.tmp").exists()


def test_exported_tokenizer_knows_the_model_context_and_pads_left(tmp_path):
    # not transformers' "unlimited" 1e30: truncation=True must cut at max_position_embeddings
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
    from mhc_lm.train.export import save_hf_folder

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    model = MhcLmForCausalLM(MhcLmConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=6))
    out = save_hf_folder(model, tmp_path / "hf", tok)
    assert tok.model_max_length > 1e20  # the caller's tokenizer is left as it was
    loaded = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert loaded.model_max_length == 6
    assert len(loaded("a b a b a b a b", truncation=True)["input_ids"]) == 6
    assert loaded.padding_side == "left" and tok.padding_side == "right"  # prompts batch for generate()
