"""Offline stability probe of a trained run: the same quantities the online callback logs.

    python -m evals.stability RUN_DIR [--model DIR] [--data DIR] [--batches 4] [--out FILE]

Loads RUN_DIR/hf (or --model, any exported MhcLmForCausalLM folder), reads validation windows
from the run's prepared data (config.yaml `data.out_dir`, or --data), and runs
`mhc_lm.metrics.probe_model` on each batch: Amax gain per layer and composite (hc/mhc), per-layer
residual-stream and gradient RMS, vanished-gradient ratio at each eps and gradient std. Values
are averaged over the batches (maxima for `*_max`). Writes RUN_DIR/stability.json, or the JSON
file --out names (not a directory; --out needs a single RUN_DIR), atomically. Names are those of
docs/stability.md.

Checked before the model runs, each an error with exit status 2: --batches, --batch-size and
--seq-len >= 1; the window length (--seq-len, else the run's data.seq_len) at most the model's
max_position_embeddings; --out not an existing directory; --device usable by this torch (CUDA
available, index in range).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from mhc_lm.config_utils import ConfigError, positive_int
from mhc_lm.files import write_json_atomic
from mhc_lm.run_dir import RunDir, RunDirError

DEFAULT_EPS = (1e-4, 1e-5, 1e-6, 1e-7)


def probe_batches(run_dir: Path, data_dir: Path | None, batches: int, batch_size: int | None, seq_len: int | None,
                  max_seq_len: int | None = None, model_dir: Path | None = None):
    """`batches` validation batches {"input_ids", "labels"} of the run's prepared data; a window
    longer than `max_seq_len` (the model's max_position_embeddings, read from `model_dir`) is refused."""
    from mhc_lm.data import PackedTokens, WindowLoader

    run = RunDir(run_dir)
    cfg = run.config()
    data_cfg, train_cfg = cfg.get("data") or {}, cfg.get("train") or {}
    if data_dir is None:
        out_dir = data_cfg.get("out_dir")
        if not out_dir:
            raise RunDirError(f"{run.config_path}: no data.out_dir to read probe batches from; pass --data "
                              "PREPARED_DIR (the folder `python launch/prepare_data.py` wrote)")
        data_dir = Path(out_dir)
        if not data_dir.is_absolute() and not data_dir.is_dir():
            data_dir = Path(__file__).resolve().parents[1] / data_dir
    if not data_dir.is_dir():
        raise RunDirError(f"prepared data folder not found: {data_dir} (from {run.config_path} data.out_dir); "
                          "pass --data PREPARED_DIR or rerun the data preparation")
    if seq_len:
        source = "--seq-len"
    elif data_cfg.get("seq_len"):
        seq_len, source = int(data_cfg["seq_len"]), f"data.seq_len of {run.config_path}"
    else:
        seq_len, source = 128, "the default window length"
    if max_seq_len is not None and seq_len > max_seq_len:
        where = f" ({Path(model_dir) / 'config.json'})" if model_dir else ""
        raise ConfigError(f"window length {seq_len} ({source}) exceeds the model's max_position_embeddings "
                          f"{max_seq_len}{where}; pass --seq-len {max_seq_len} or less")
    batch_size = batch_size or int(train_cfg.get("micro_batch_size") or 8)
    split = "val"
    try:
        ds = PackedTokens(data_dir, split="val")
        loader = WindowLoader(ds, seq_len, batch_size, seed=int(data_cfg.get("seed") or 0) + 1)
    except (FileNotFoundError, ValueError):
        split = "train"  # no usable validation split: fall back to training windows, said in the JSON
        loader = WindowLoader(PackedTokens(data_dir, split="train"), seq_len, batch_size, seed=12345)
    it = iter(loader)
    return [next(it) for _ in range(batches)], split


def check_device(device: str) -> None:
    """ConfigError with a one-line reason when torch cannot use `device`."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {device}: not a torch device ({str(err).splitlines()[0]})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available to this torch (torch {torch.__version__}, "
                              f"built with CUDA {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")


def average(results: list[dict]) -> dict[str, float]:
    """Mean over batches of every key (max for `*_max` keys)."""
    keys = sorted({k for r in results for k in r})
    out = {}
    for k in keys:
        vals = [r[k] for r in results if k in r]
        out[k] = max(vals) if k.endswith("_max") else sum(vals) / len(vals)
    return out


def run_stability(run_dir: Path, model_dir: Path | None = None, data_dir: Path | None = None, batches: int = 4,
                  batch_size: int | None = None, seq_len: int | None = None, eps=DEFAULT_EPS,
                  exclude=("embed_tokens", "lm_head"), device: str = "cpu", out: Path | None = None) -> dict:
    """Probe a run's exported model; returns (and writes) the stability record."""
    import torch

    from mhc_lm.metrics import probe_model
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    run_dir = Path(run_dir)
    for name, value in (("--batches", batches), ("--batch-size", batch_size), ("--seq-len", seq_len)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1 (got {value})")
    out = Path(out) if out else RunDir(run_dir).stability_path
    if out.is_dir():  # checked before the probe: writing would fail only at the end
        raise ConfigError(f"output {out} is a directory; --out names the JSON file to write, "
                          f"e.g. {out / 'stability.json'}")
    check_device(device)
    if model_dir is None:
        try:
            model_dir = RunDir(run_dir).model_dir()
        except RunDirError as err:
            raise RunDirError(f"{err}; or pass --model DIR") from None
    elif not (Path(model_dir) / "config.json").is_file():
        raise RunDirError(f"--model {model_dir}: no exported model there (config.json missing)")
    model_dir = Path(model_dir)
    max_pos = MhcLmConfig.from_pretrained(model_dir).max_position_embeddings
    data, split = probe_batches(run_dir, data_dir, batches, batch_size, seq_len, max_pos, model_dir)
    model = MhcLmForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.eval()
    results = []
    for b in tqdm(data, desc=f"stability {run_dir.name}", disable=len(data) < 2):
        b = {k: v.to(device) for k, v in b.items()}
        results.append(probe_model(model, b, eps=eps, exclude=exclude))
    record = {
        "run_dir": str(run_dir), "model_dir": str(model_dir), "residual_mode": model.config.residual_mode,
        "num_hidden_layers": model.config.num_hidden_layers, "split": split, "batches": len(data),
        "batch_shape": list(data[0]["input_ids"].shape), "vanished_eps": list(eps), "vanished_exclude": list(exclude),
        "metrics": average(results),
    }
    write_json_atomic(out, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (with hf/ and config.yaml)")
    parser.add_argument("--model", type=Path, default=None, help="HF folder to probe (default RUN_DIR/hf)")
    parser.add_argument("--data", type=Path, default=None, help="prepared data folder (default config data.out_dir)")
    parser.add_argument("--batches", type=positive_int, default=4, help="probe batches (>= 1; default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="default: the run's train.micro_batch_size")
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help="default: the run's data.seq_len; at most the model's max_position_embeddings")
    parser.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS))
    parser.add_argument("--include-embeddings", action="store_true",
                        help="count embedding/LM-head gradients in the vanished ratio (unseen rows are exact zeros)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu (default), cuda, cuda:1")
    parser.add_argument("--out", type=Path, default=None,
                        help="output JSON file, not a directory (default RUN_DIR/stability.json)")
    args = parser.parse_args(argv)
    if args.out and len(args.run_dirs) > 1:
        parser.error("--out needs a single RUN_DIR")
    exclude = () if args.include_embeddings else ("embed_tokens", "lm_head")
    for run_dir in args.run_dirs:
        try:
            rec = run_stability(run_dir, args.model, args.data, args.batches, args.batch_size, args.seq_len,
                                tuple(args.eps), exclude, args.device, args.out)
        except ConfigError as err:  # a bad run directory (RunDirError) or argument: one line, status 2
            print(f"error: {err}", file=sys.stderr)
            return 2
        m = rec["metrics"]
        keys = ["amax/fwd/composite", "amax/bwd/composite"] + [k for k in m if k.startswith("vanished/")] + ["grad_std"]
        print(f"{run_dir} ({rec['residual_mode']}): " + ", ".join(format_metric(k, m[k]) for k in keys if k in m))
    return 0


def format_metric(key: str, value: float) -> str:
    """`key=value` as printed; vanished ratios in percent, as evals.compare's report shows them
    (stability.json keeps the fractions)."""
    if key.startswith("vanished"):
        return f"{key}={100 * value:.4g}%"
    return f"{key}={value:.4g}"


if __name__ == "__main__":
    sys.exit(main())
