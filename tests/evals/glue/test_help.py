"""`python -m evals.glue --help`: the usage examples are commands that can be copied as shown."""

import shlex

from evals.glue.cli import build_parser


def test_help_examples_are_copyable_commands():
    lines = build_parser().format_help().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("python -m evals.glue --model"))
    commands, current = [], ""
    for ln in lines[start:]:
        if not ln.strip():
            break
        assert "  " not in ln.strip(), ln  # no stray runs of spaces inside an example
        current += ln.strip()
        if current.endswith("\\"):
            current = current[:-1]  # shell line continuation
        else:
            commands.append(current)
            current = ""
    assert len(commands) == 3 and not current
    zeroshot = shlex.split(commands[1])
    assert zeroshot[:3] == ["python", "-m", "evals.glue"]
    args = build_parser().parse_args(zeroshot[3:])
    assert args.data_dir == "~/glue_data" and args.overrides == ["zeroshot.batch_size=64"]
    assert args.protocol == "zeroshot" and args.out == "glue/mhc_zs"
