"""Results on disk and as Markdown: one JSON per task, a table per model, side-by-side comparisons.

    OUT/<task>.json        metrics, score, settings, per-seed runs (fine-tune) or per-example
                           log-likelihoods (zero-shot) of one task
    OUT/results.md         the table of this model
    OUT/summary.json       model info, protocol, every task's metrics and the GLUE average

Numbers in tables are percentages with one decimal, as on the GLUE leaderboard. The GLUE
average is the mean of the per-task scores (a task's score is the mean of its metrics; MNLI
averages matched and mismatched), over the tasks every compared model has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mhc_lm.files import write_json_atomic, write_text_atomic

from .tasks import ALL_TASKS, get_task

METRIC_TITLES = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}
TASK_TITLES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
               "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}


def read_results(out_dir: Path) -> dict:
    """{'model': {...}, 'protocol': str, 'tasks': {name: task result}} from a results folder."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"--compare {out_dir}: not a directory (expected the --out folder of a run)")
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    tasks = {}
    for name in ALL_TASKS:
        path = out_dir / f"{name}.json"
        if path.is_file():
            try:
                tasks[name] = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err}); rerun that task") from err
    if not tasks:
        raise FileNotFoundError(f"--compare {out_dir}: no <task>.json results (e.g. {out_dir}/rte.json)")
    protocols = {t.get("protocol") for t in tasks.values()}
    return {"model": summary.get("model", {}), "protocol": "/".join(sorted(p for p in protocols if p)),
            "tasks": tasks, "name": summary.get("name") or out_dir.name}


def task_columns(task: str, result: dict) -> list[tuple[str, float]]:
    """(column title, value) pairs of one task, e.g. [('MRPC acc', .8), ('MRPC F1', .85)]."""
    cols = []
    for key, value in result["metrics"].items():
        metric, _, split = key.partition("_")
        title = f"{TASK_TITLES.get(task, task)}{'-' + split if split else ''}"
        spec_metrics = get_task(task).metrics
        if len(spec_metrics) > 1:
            title += f" {METRIC_TITLES.get(metric, metric)}"
        cols.append((title, value))
    return cols


def glue_average(results: dict, tasks: Sequence[str]) -> float | None:
    scores = [results["tasks"][t]["score"] for t in tasks if t in results["tasks"]]
    return sum(scores) / len(scores) if scores and len(scores) == len(tasks) else None


def markdown_table(runs: Sequence[dict]) -> str:
    """Models side by side: one row per model, one column per metric, GLUE average last."""
    common = [t for t in ALL_TASKS if all(t in r["tasks"] for r in runs)]
    present = [t for t in ALL_TASKS if any(t in r["tasks"] for r in runs)]
    titles: list[str] = []
    for t in present:
        for title, _ in task_columns(t, next(r["tasks"][t] for r in runs if t in r["tasks"])):
            titles.append(title)
    header = ["model", "mode", "protocol", *titles, "GLUE avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for r in runs:
        values = {}
        for t in present:
            if t in r["tasks"]:
                values.update(dict(task_columns(t, r["tasks"][t])))
        avg = glue_average(r, common)
        cells = [r["name"], str(r["model"].get("residual_mode", "?")), r["protocol"]]
        cells += [f"{100 * values[c]:.1f}" if c in values else "-" for c in titles]
        cells.append(f"{100 * avg:.1f}" if avg is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nGLUE avg: mean task score over {len(common)} task(s) every model has "
            f"({', '.join(TASK_TITLES[t] for t in common) or 'none'}); a task's score is the mean of its "
            f"metrics. Numbers in percent.\n")
    return "\n".join(lines) + "\n" + note


def write_run_report(out_dir: Path, name: str, model: dict, protocol: str, config: dict) -> str:
    """summary.json and results.md of one --out folder, from the task JSON files in it."""
    out_dir = Path(out_dir)
    results = read_results(out_dir)
    results["name"], results["model"], results["protocol"] = name, model, protocol
    table = markdown_table([results])
    summary = {"name": name, "model": model, "protocol": protocol, "config": config,
               "glue_average": glue_average(results, list(results["tasks"])),
               "tasks": {t: {"metrics": r["metrics"], "score": r["score"]} for t, r in results["tasks"].items()}}
    write_json_atomic(out_dir / "summary.json", summary)
    write_text_atomic(out_dir / "results.md", f"# GLUE ({protocol}): {name}\n\n{table}")
    return table


def compare(dirs: Sequence[Path]) -> str:
    return markdown_table([read_results(Path(d)) for d in dirs])
