"""Evaluations of trained mhc-lm runs.

    python -m evals.stability RUN_DIR            # probe metrics of the exported checkpoint -> stability.json
    python -m evals.compare RUN_DIR... --out DIR # cross-mode report: PNGs, report.md, report.html
    python -m evals.glue ...                     # GLUE (see evals/glue)
"""
