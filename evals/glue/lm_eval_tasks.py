"""Local lm-evaluation-harness task files for GLUE: the `glue` prompts on data read from disk.

lm-evaluation-harness' own `glue` tasks read `nyu-mll/glue` from the Hub. Offline, or on a
local copy of GLUE, write task YAMLs with the same `doc_to_text` / `doc_to_choice` and the dev
split as JSON lines, then point `lm_eval --include_path` at the folder:

    python -m evals.glue.lm_eval_tasks --data-dir ~/glue_data --out /tmp/glue_tasks
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \
        --model_args pretrained=runs/mhc_1b/hf,trust_remote_code=True \
        --tasks glue_local --include_path /tmp/glue_tasks --device cuda:0

Task names are `glue_local_<task>` (MNLI: `glue_local_mnli` matched, `glue_local_mnli_mismatch`)
and the group `glue_local`. The templates are lm-evaluation-harness' (v0.4, `lm_eval/tasks/glue`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from .data import load_split
from .tasks import TaskSpec, parse_tasks

# doc_to_text of lm_eval/tasks/glue/<task>/default.yaml (MNLI's utils.doc_to_text as Jinja)
DOC_TO_TEXT = {
    "cola": "{{sentence}}\nQuestion: Does this sentence make sense?\nAnswer:",
    "sst2": "{{sentence}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
    "mrpc": "Sentence 1: {{sentence1}}\nSentence 2: {{sentence2}}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
    "qqp": "Question 1: {{question1}}\nQuestion 2: {{question2}}\nQuestion: Do both questions ask the same thing?\nAnswer:",
    "mnli": ("{{premise}}\nQuestion: {{hypothesis.strip() ~ ('' if hypothesis.strip().endswith('.') else '.')}}"
             " True, False or Neither?\nAnswer:"),
    "qnli": "{{question}}\n{{sentence}}\nQuestion: Does this response answer the question?\nAnswer:",
    "rte": "{{sentence1}}\nQuestion: {{sentence2}} True or False?\nAnswer:",
    "wnli": "{{sentence1}}\nQuestion: {{sentence2}} True or False?\nAnswer:",
}
METRICS = {"cola": ["mcc"], "mrpc": ["acc", "f1"], "qqp": ["acc", "f1"]}


def task_yaml(spec: TaskSpec, task_name: str, data_file: Path) -> dict:
    return {
        "tag": "glue_local",
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(Path(data_file).resolve())}},
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": DOC_TO_TEXT[spec.name],
        "doc_to_target": "label",
        "doc_to_choice": list(spec.choices),
        "metric_list": [{"metric": m} for m in METRICS.get(spec.name, ["acc"])],
        "metadata": {"version": 1.0},
    }


def write_lm_eval_tasks(out_dir: Path, specs: list[TaskSpec], data_dir: Path | None = None,
                        limit: int | None = None) -> list[str]:
    """Write `<task>.jsonl` + `<task>.yaml` per dev split into out_dir; returns the task names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for spec in specs:
        if spec.prompt is None:
            continue  # no STS-B task in lm-evaluation-harness
        for split in spec.dev_splits:
            name = f"glue_local_{spec.name}" + ("_mismatch" if split == "validation_mismatched" else "")
            docs = load_split(spec, split, data_dir, limit)
            data_file = out_dir / f"{name}.jsonl"
            tmp = data_file.with_name(data_file.name + ".tmp")
            with tmp.open("w") as f:
                for row in docs:
                    f.write(json.dumps(row) + "\n")
            tmp.replace(data_file)
            (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(task_yaml(spec, name, data_file),
                                                                 sort_keys=False, allow_unicode=True))
            names.append(name)
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.glue.lm_eval_tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="local GLUE data (default: nyu-mll/glue from the Hub)")
    p.add_argument("--tasks", default="all")
    p.add_argument("--limit", type=int, help="first N dev examples per task")
    p.add_argument("--out", required=True, help="folder for the task YAMLs and JSON lines")
    args = p.parse_args(argv)
    names = write_lm_eval_tasks(Path(args.out), parse_tasks(args.tasks), args.data_dir, args.limit)
    print(f"wrote {len(names)} task(s) to {args.out}: {', '.join(names)}\n"
          f"lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True "
          f"--tasks {','.join(names)} --include_path {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
