"""Entry point for the multi-process and signal tests: trains the tiny model on the in-memory
corpus of helpers.py.   python tests/train/toy_run.py RUN_CONFIG.yaml [overrides...]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gc  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from mhc_lm.metrics import build_callbacks  # noqa: E402
from mhc_lm.train import BaseCallback, Trainer, load_run_config  # noqa: E402
from mhc_lm.train.distributed import build_accelerator, shutdown  # noqa: E402
from tests.train.helpers import toy_data  # noqa: E402


class Sleep(BaseCallback):
    """TOY_STEP_SLEEP seconds per step, so a test can signal the run mid-way."""

    def on_step_end(self, trainer, step, logs):
        time.sleep(float(os.environ.get("TOY_STEP_SLEEP", "0")))


if __name__ == "__main__":
    torch.set_num_threads(1)  # same float reduction order in every process and in the reference
    config = load_run_config(sys.argv[1], sys.argv[2:])
    acc = build_accelerator(config)
    try:
        status = Trainer(config, data=toy_data(config, acc.process_index, acc.num_processes), accelerator=acc,
                         callbacks=[Sleep(), *build_callbacks(config)]).fit()
    finally:
        shutdown(acc)  # no Trainer left referenced: the process group goes before interpreter teardown
    if acc.is_main_process:
        live = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
        print(f"STATUS {status} world_size={acc.num_processes} distributed_type={acc.distributed_type} "
              f"live_ddp={live}", flush=True)
