"""Model presets (`configs/model/*.yaml`): load them and count their parameters.

    python -m mhc_lm.presets configs/model/*.yaml     # prints a Markdown table of parameter counts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM


def load_model_config(path: str | Path, **overrides) -> MhcLmConfig:
    """MhcLmConfig from a preset YAML of MhcLmConfig keyword arguments (unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model preset not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    data.update(overrides)
    known = set(MhcLmConfig.__init__.__code__.co_varnames[1 : MhcLmConfig.__init__.__code__.co_argcount])
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
    return MhcLmConfig(**data)


def count_parameters(config: MhcLmConfig) -> dict[str, int]:
    """Total (tied weights once), block F, and residual-mixing parameter counts, built on meta."""
    with torch.device("meta"):
        model = MhcLmForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
    mixing = sum(p.numel() for n, p in model.named_parameters() if "mixing" in n)
    return {"total": total, "mixing": mixing, "non_mixing": total - mixing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+")
    args = parser.parse_args()
    print("| preset | residual_mode | total params | mixing params |")
    print("|---|---|---:|---:|")
    for path in args.presets:
        cfg = load_model_config(path)
        c = count_parameters(cfg)
        print(f"| {Path(path).stem} | {cfg.residual_mode} | {c['total']:,} | {c['mixing']:,} |")


if __name__ == "__main__":
    main()
