#!/usr/bin/env python
"""Tokenize a corpus into packed shards: `python launch/prepare_data.py --config <yaml> [data.key=value ...]`.

Reads the `data` section of the YAML (other sections, e.g. model/train of a run config, are
ignored), applies dotted overrides (`data.vocab_size=4096` or just `vocab_size=4096`), and
prepares `data.out_dir`. With `data.train_files` unset it uses the embedded State of the Union
corpus. Prints the folder and its token counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mhc_lm.config_utils import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides
from mhc_lm.data import DataConfig, prepare_data, read_meta


def build_config(config_path: str | None, overrides: list[str]) -> DataConfig:
    section = load_yaml(config_path).get("data", {}) if config_path else {}
    if section is None:
        section = {}
    tree = parse_overrides(overrides)
    data_over = tree.pop("data", {})
    other_sections = [k for k, v in tree.items() if isinstance(v, dict)]
    for k in other_sections:  # e.g. train.max_steps=... shared with the training command
        print(f"note: ignoring overrides of section {k!r} (prepare_data reads only `data`)", file=sys.stderr)
        tree.pop(k)
    return from_dict(DataConfig, deep_merge(deep_merge(section, tree), data_over), prefix="data.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with a `data:` section (optional)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.vocab_size=4096")
    args = parser.parse_args(argv)
    try:
        cfg = build_config(args.config, args.overrides)
        t0 = time.time()
        out_dir = prepare_data(cfg, progress=not args.quiet)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or unwritable data.out_dir (the staging folder is removed)
        from mhc_lm.train.faults import as_write_fault

        fault = as_write_fault(err)
        if fault is None:
            raise
        print(f"error: {fault.strerror}", file=sys.stderr)
        return 2
    meta = read_meta(out_dir)
    summary = {
        "out_dir": str(out_dir),
        "seconds": round(time.time() - t0, 2),
        "vocab_size": meta["vocab_size"],
        "dtype": meta["dtype"],
        "special_token_ids": {k: meta["tokenizer"][f"{k}_token_id"] for k in ("pad", "bos", "eos", "unk")},
        **{f"{split}_tokens": s["tokens"] for split, s in meta["splits"].items()},
        **{f"{split}_documents": s["documents"] for split, s in meta["splits"].items()},
    }
    skipped = {k: n for k, n in meta.get("rows_without_text", {}).items() if n}
    if skipped:  # rows whose text was missing or null (a warning named the files)
        summary["rows_without_text"] = skipped
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
