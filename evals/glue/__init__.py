"""GLUE evaluation harness: fine-tuning and zero-shot protocols, official metrics, comparison tables.

    python -m evals.glue --model RUN_DIR_OR_HF_DIR --tasks all --protocol finetune|zeroshot --out DIR
    python -m evals.glue --compare DIR...
"""

from .metrics import compute_metrics, task_score
from .tasks import ALL_TASKS, TASKS, TaskSpec, get_task, parse_tasks

__all__ = ["ALL_TASKS", "TASKS", "TaskSpec", "compute_metrics", "get_task", "parse_tasks", "task_score"]
