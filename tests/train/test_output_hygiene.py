"""Output a user reads: third-party messages without information are filtered at their source (and
only those), data preparation of local files says what it does, and no bars go to a log file."""

import logging

import pytest


@pytest.mark.parametrize("logger_name, message", [
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
    ("accelerate.utils.other", "Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but check "
                               "by verifying that you don't receive any warning while reloading"),
])
def test_uninformative_library_messages_are_dropped_and_others_kept(logger_name, message):
    import mhc_lm.train.config  # noqa: F401  (installs the filters)

    class Keep(logging.Handler):  # on the logger itself: independent of propagation and of pytest's capture
        def __init__(self):
            super().__init__(logging.INFO)
            self.texts = []

        def emit(self, record):
            self.texts.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        logger.warning(message)
        logger.warning("Removed shared tensor {'model.other.weight'} while saving: a real problem")
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert keep.texts == ["Removed shared tensor {'model.other.weight'} while saving: a real problem"]


def test_the_filters_are_installed_once():
    from mhc_lm.train import quiet

    quiet.install()
    quiet.install()
    for name, fragment in quiet.FILTERED:
        assert sum(getattr(f, "fragment", None) == fragment for f in logging.getLogger(name).filters) == 1


def test_local_files_are_read_not_downloaded_and_prep_is_one_line_in_a_log(tmp_path, capfd):
    from mhc_lm.data import DataConfig, prepare_data

    corpus = tmp_path / "txt"
    corpus.mkdir()
    for i in range(20):  # datasets shows its file loop from 16 files on
        (corpus / f"d{i:02d}.txt").write_text(f"document {i} " + "words and more words. " * 60)
    cfg = DataConfig(train_files=[str(corpus / "*.txt")], vocab_size=300, val_fraction=0.1, num_proc=1,
                     out_dir=str(tmp_path / "prepared"))
    prepare_data(cfg)  # progress=True, but stderr is captured (not a terminal)
    err = capfd.readouterr().err
    assert "Downloading" not in err
    assert "[mhc-lm] preparing" in err and "%|" not in err  # one line, no progress bars

    from mhc_lm.data.sources import load_local

    load_local(sorted(str(p) for p in corpus.iterdir()), cfg, cache_dir=str(tmp_path / "cache"))  # bars on
    err = capfd.readouterr().err
    assert "reading local text files" in err and "Downloading" not in err


def test_hugging_face_bars_are_off_when_stderr_is_a_log_file(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    code = ("import mhc_lm.train.config, transformers.utils.logging as t; "
            "print(t.is_progress_bar_enabled())")
    with open(tmp_path / "log", "w") as log:
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                             check=True).stdout
    assert out.strip() == "False"
