"""Entry point of the spike-policy process tests: the tiny model on the toy corpus with bad batches.

    SPIKE_BAD="11:spike,15:nan" [SPIKE_KILL_AFTER_REWIND=MARKER] python tests/train/spike_run.py CONFIG.yaml [overrides]

Exit codes as launch/pretrain.py (0 completed, 3 diverged). With SPIKE_KILL_AFTER_REWIND the process
SIGKILLs itself right after its first rewind, unless MARKER exists (it creates MARKER first), so a
second launch of the same command runs on."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from mhc_lm.train import BaseCallback, Trainer, TrainingDiverged, load_run_config  # noqa: E402
from tests.train.spike_helpers import PoisonHook, poisoned_data  # noqa: E402


class KillAfterRewind(BaseCallback):
    def __init__(self, marker: Path):
        self.marker = marker

    def on_rewind(self, trainer):
        if not self.marker.exists():
            self.marker.write_text("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    torch.set_num_threads(1)
    config = load_run_config(sys.argv[1], sys.argv[2:])
    bad = {int(b): kind for b, kind in (item.split(":") for item in os.environ.get("SPIKE_BAD", "").split(",") if item)}
    callbacks = [PoisonHook()]
    if os.environ.get("SPIKE_KILL_AFTER_REWIND"):
        callbacks.append(KillAfterRewind(Path(os.environ["SPIKE_KILL_AFTER_REWIND"])))
    try:
        status = Trainer(config, data=poisoned_data(config, bad), callbacks=callbacks).fit()
    except TrainingDiverged as err:
        print(f"DIVERGED {err}", file=sys.stderr)
        sys.exit(3)
    print(f"STATUS {status}", flush=True)
