"""Entry point of `python -m evals.glue` (see evals/glue/cli.py)."""

import sys

from .cli import main

sys.exit(main())
