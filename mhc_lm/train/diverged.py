"""The exception a diverged run ends with (launch/pretrain.py turns it into exit code 3)."""


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN/Inf, or a spike policy ran out of retries; DIVERGED is
    written and no checkpoint after it."""
