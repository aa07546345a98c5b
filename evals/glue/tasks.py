"""The nine GLUE tasks (Wang et al., 2018, arXiv 1804.07461): columns, labels, metrics, prompts.

One `TaskSpec` per task holds everything the loaders, the two protocols and the report need:

  - the Hugging Face Hub names (`nyu-mll/glue`, config `name`, splits `validation`, or
    `validation_matched` / `validation_mismatched` for MNLI) and their column names;
  - the original GLUE download layout (`<dir_name>/train.tsv`, `dev.tsv`; CoLA has no
    header, the others name their columns in a header row; MNLI has `dev_matched.tsv` and
    `dev_mismatched.tsv`), with the string labels of the TSV mapped to the Hub's integer ids;
  - the official metrics (CoLA Matthews corr.; MRPC/QQP accuracy and F1; STS-B Pearson and
    Spearman; accuracy elsewhere);
  - the zero-shot prompt and label verbalisations of lm-evaluation-harness
    (`lm_eval/tasks/glue/<task>/default.yaml`, v0.4), so zero-shot numbers are comparable.
    lm-evaluation-harness has no STS-B task, so STS-B has no zero-shot prompt here either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

HUB_PATH = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """Short name used on the command line and as the Hub config (`cola`, `sst2`, ...)."""
    dir_name: str
    """Folder of the original GLUE download (`CoLA`, `SST-2`, ...)."""
    text_columns: tuple[str, ...]
    """Hub column names of the input text(s): one sentence or a pair."""
    num_labels: int
    """Classes; 1 means regression (STS-B)."""
    metrics: tuple[str, ...]
    """Official metric names, in table order."""
    dev_splits: tuple[str, ...] = ("validation",)
    """Hub names of the dev splits evaluated (MNLI: matched and mismatched)."""
    tsv_columns: dict[str, str] = field(default_factory=dict)
    """Hub column -> TSV header column (or 0-based column index for CoLA, which has no header)."""
    tsv_label_map: dict[str, int] | None = None
    """TSV label string -> Hub label id (None: the TSV already holds the id / score)."""
    prompt: Callable[[dict], str] | None = None
    """lm-evaluation-harness `doc_to_text` (None: no zero-shot protocol for this task)."""
    choices: tuple[str, ...] = ()
    """lm-evaluation-harness `doc_to_choice`, indexed by the Hub label id."""
    label_names: tuple[str, ...] = ()
    """The Hub's class names (`ClassLabel` names of nyu-mll/glue), indexed by label id; local
    files may hold these strings instead of the ids."""

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def label_column(self) -> str:
        return "label"


def tsv_split_file(spec: TaskSpec, split: str) -> str:
    """Hub split name -> file stem of the original GLUE layout."""
    return {"train": "train", "validation": "dev", "validation_matched": "dev_matched",
            "validation_mismatched": "dev_mismatched"}[split]


def _mnli_prompt(doc: dict) -> str:
    # lm_eval/tasks/glue/mnli/utils.py: the hypothesis always ends with a full stop.
    hypothesis = doc["hypothesis"].strip()
    if not hypothesis.endswith("."):
        hypothesis += "."
    return f"{doc['premise']}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:"


_NLI = {"entailment": 0, "not_entailment": 1}

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        "cola", "CoLA", ("sentence",), 2, ("mcc",),
        # no header: source code, label, original annotation, sentence
        tsv_columns={"label": "1", "sentence": "3"},
        prompt=lambda d: f"{d['sentence']}\nQuestion: Does this sentence make sense?\nAnswer:",
        choices=("no", "yes"),
        label_names=("unacceptable", "acceptable"),
    ),
    "sst2": TaskSpec(
        "sst2", "SST-2", ("sentence",), 2, ("accuracy",),
        tsv_columns={"sentence": "sentence", "label": "label"},
        prompt=lambda d: f"{d['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        choices=("negative", "positive"),
        label_names=("negative", "positive"),
    ),
    "mrpc": TaskSpec(
        "mrpc", "MRPC", ("sentence1", "sentence2"), 2, ("accuracy", "f1"),
        tsv_columns={"label": "Quality", "sentence1": "#1 String", "sentence2": "#2 String"},
        prompt=lambda d: (f"Sentence 1: {d['sentence1']}\nSentence 2: {d['sentence2']}\n"
                          "Question: Do both sentences mean the same thing?\nAnswer:"),
        choices=("no", "yes"),
        label_names=("not_equivalent", "equivalent"),
    ),
    "stsb": TaskSpec(
        "stsb", "STS-B", ("sentence1", "sentence2"), 1, ("pearson", "spearman"),
        tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    ),
    "qqp": TaskSpec(
        "qqp", "QQP", ("question1", "question2"), 2, ("accuracy", "f1"),
        tsv_columns={"question1": "question1", "question2": "question2", "label": "is_duplicate"},
        prompt=lambda d: (f"Question 1: {d['question1']}\nQuestion 2: {d['question2']}\n"
                          "Question: Do both questions ask the same thing?\nAnswer:"),
        choices=("no", "yes"),
        label_names=("not_duplicate", "duplicate"),
    ),
    "mnli": TaskSpec(
        "mnli", "MNLI", ("premise", "hypothesis"), 3, ("accuracy",),
        dev_splits=("validation_matched", "validation_mismatched"),
        tsv_columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
        tsv_label_map={"entailment": 0, "neutral": 1, "contradiction": 2},
        prompt=_mnli_prompt,
        choices=("True", "Neither", "False"),
        label_names=("entailment", "neutral", "contradiction"),
    ),
    "qnli": TaskSpec(
        "qnli", "QNLI", ("question", "sentence"), 2, ("accuracy",),
        tsv_columns={"question": "question", "sentence": "sentence", "label": "label"},
        tsv_label_map=_NLI,
        prompt=lambda d: (f"{d['question']}\n{d['sentence']}\n"
                          "Question: Does this response answer the question?\nAnswer:"),
        choices=("yes", "no"),
        label_names=("entailment", "not_entailment"),
    ),
    "rte": TaskSpec(
        "rte", "RTE", ("sentence1", "sentence2"), 2, ("accuracy",),
        tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
        tsv_label_map=_NLI,
        prompt=lambda d: f"{d['sentence1']}\nQuestion: {d['sentence2']} True or False?\nAnswer:",
        choices=("True", "False"),
        label_names=("entailment", "not_entailment"),
    ),
    "wnli": TaskSpec(
        "wnli", "WNLI", ("sentence1", "sentence2"), 2, ("accuracy",),
        # WNLI's TSV labels are already 0 (not_entailment) / 1 (entailment), as on the Hub.
        tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
        prompt=lambda d: f"{d['sentence1']}\nQuestion: {d['sentence2']} True or False?\nAnswer:",
        choices=("False", "True"),
        label_names=("not_entailment", "entailment"),
    ),
}

ALL_TASKS = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    key = name.strip().lower().replace("-", "")
    aliases = {"sst": "sst2", "sts": "stsb"}
    key = aliases.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(ALL_TASKS)}")
    return TASKS[key]


def parse_tasks(text: str) -> list[TaskSpec]:
    """'cola,sst2' or 'all' -> task specs, in the order given, without duplicates."""
    names = ALL_TASKS if text.strip().lower() in ("all", "glue") else [t for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks is empty; give a comma-separated list such as cola,sst2 or 'all'")
    specs: list[TaskSpec] = []
    for n in names:
        spec = get_task(n)
        if spec not in specs:
            specs.append(spec)
    return specs


def split_label(split: str) -> str:
    """Short name of a dev split for tables: validation -> '', validation_matched -> 'm'."""
    return {"validation": "", "validation_matched": "m", "validation_mismatched": "mm"}.get(split, split)
