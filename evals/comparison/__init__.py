"""The pieces of `python -m evals.compare`: loading runs (`load`), per-run numbers and per-group
statistics (`summary`, `stats`), plots (`plots`) and the written report (`report`)."""
