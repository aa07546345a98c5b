"""GLUE evaluation harness: fine-tuning and zero-shot protocols, official metrics, comparison tables.

    python -m evals.glue --model RUN_DIR_OR_HF_DIR --tasks all --protocol finetune|zeroshot --out DIR
    python -m evals.glue --compare DIR...

Modules: `tasks` (specs and prompts), `data` (loading), `metrics`, `zeroshot`, `finetune`,
`report`, `lm_eval_tasks` (local task files for lm-evaluation-harness), `cli`. Importing the
package stays light (no torch); the heavy modules load on use.
"""

from .tasks import ALL_TASKS, TASKS, TaskSpec, get_task, parse_tasks

__all__ = ["ALL_TASKS", "TASKS", "TaskSpec", "get_task", "parse_tasks"]
