"""Task specs agree with lm-evaluation-harness' glue tasks; the shipped config loads and validates."""

from pathlib import Path

import pytest

from evals.glue.config import DEFAULT_CONFIG, load_glue_config
from evals.glue.data import load_split
from evals.glue.lm_eval_tasks import DOC_TO_TEXT
from evals.glue.tasks import ALL_TASKS, get_task, parse_tasks
from mhc_lm.config_utils import ConfigError


def _lm_eval_glue_yaml(task: str) -> dict:
    lm_eval = pytest.importorskip("lm_eval")
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    folder = Path(lm_eval.__file__).parent / "tasks" / "glue" / task
    return yaml.load((folder / "default.yaml").read_text(), Loader=Loader)


@pytest.mark.parametrize("task", [t for t in ALL_TASKS if t != "stsb"])
def test_prompts_and_choices_match_lm_eval_harness(task, fixtures_dir):
    """Our Python prompt == lm-evaluation-harness' own template, rendered on every fixture row."""
    import jinja2

    upstream = _lm_eval_glue_yaml(task)
    spec = get_task(task)
    assert list(spec.choices) == upstream["doc_to_choice"]
    assert upstream["doc_to_target"] == "label"
    if task == "mnli":
        from lm_eval.tasks.glue.mnli.utils import doc_to_text as upstream_text
    else:
        template = jinja2.Template(upstream["doc_to_text"], keep_trailing_newline=True)
        upstream_text = template.render
    local = jinja2.Template(DOC_TO_TEXT[task], keep_trailing_newline=True)  # our local-task YAML template
    for split in spec.dev_splits:
        for doc in load_split(spec, split, fixtures_dir):
            expected = upstream_text(doc) if task == "mnli" else upstream_text(**doc)
            assert spec.prompt(doc) == expected
            assert local.render(**doc) == expected


def test_stsb_has_no_zero_shot_prompt():
    assert get_task("stsb").prompt is None and get_task("stsb").is_regression


def test_task_names():
    assert [s.name for s in parse_tasks("all")] == list(ALL_TASKS)
    assert [s.name for s in parse_tasks("SST-2, sts-b,rte,rte")] == ["sst2", "stsb", "rte"]
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'.*cola"):
        parse_tasks("cola,squad")


def test_shipped_config_and_per_task_overrides():
    cfg = load_glue_config(DEFAULT_CONFIG)
    assert cfg.finetune_for("rte").num_epochs == 10
    assert cfg.finetune_for("sst2").learning_rate == cfg.finetune.learning_rate
    cfg = load_glue_config(DEFAULT_CONFIG, ["tasks.rte.learning_rate=1.0e-4", "seeds=[1,2]"])
    assert cfg.finetune_for("rte").learning_rate == 1.0e-4 and cfg.seeds == [1, 2]
    assert cfg.finetune_for("cola").learning_rate == 2e-5


@pytest.mark.parametrize("override, message", [
    ("finetune.lr=1e-4", r"finetune\.lr"),
    ("tasks.rte.epochs=3", r"tasks\.rte\.epochs"),
    ("tasks.squad.num_epochs=3", r"tasks\.squad: unknown GLUE task"),
    ("finetune.warmup_ratio=1.5", r"warmup_ratio"),
    ("mixed_precision=fp8", r"mixed_precision.*'bf16'"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_glue_config(DEFAULT_CONFIG, [override])
