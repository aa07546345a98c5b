#!/usr/bin/env python
"""Data pipeline throughput on the embedded corpus: prepare time, tokenization, loader vs training.

    python benchmarks/data.py [--vocab-size 8192] [--seq-len 128] [--batch-size 16] [--num-proc 2]

Prints a markdown table: preparing the default corpus from scratch (wall seconds), tokenization
in tokens/s per core (one process, one thread: the cached-word encoder used by prepare_data and
the plain Hugging Face tokenizer call), WindowLoader batches/s, and the tiny model's training
steps/s on the same batch shape (forward + backward + AdamW, CPU), whose ratio says how far the
loader is from being the bottleneck. The machine may be shared: numbers are wall-clock.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core for the HF tokenizer measurement
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, min_seconds: float = 2.0):
    """Call fn() repeatedly for at least min_seconds -> (calls per second, last result)."""
    n, t0 = 0, time.perf_counter()
    while True:
        out = fn()
        n += 1
        if time.perf_counter() - t0 >= min_seconds:
            return n / (time.perf_counter() - t0), out


def model_steps_per_s(vocab_size: int, seq_len: int, batch_size: int, mode: str) -> float:
    import torch
    import yaml

    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM

    kwargs = yaml.safe_load((ROOT / "configs" / "model" / "tiny.yaml").read_text())
    kwargs.update(vocab_size=vocab_size, residual_mode=mode)
    torch.manual_seed(0)
    model = MhcLmForCausalLM(MhcLmConfig(**kwargs))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab_size, (batch_size, seq_len))

    def step():
        loss = model(x, shift_labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    rate, _ = timed(step, 3.0)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--modes", default="standard,mhc", help="residual modes timed for the ratio")
    args = parser.parse_args()

    from mhc_lm.data import DataConfig, PackedTokens, WindowLoader, load_tokenizer, prepare_data
    from mhc_lm.data.corpus import load_corpus
    from mhc_lm.data.tokenizer import DocumentEncoder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(vocab_size=args.vocab_size, out_dir=f"{tmp}/sotu", num_proc=args.num_proc)
        t0 = time.perf_counter()
        out_dir = prepare_data(cfg, progress=False)
        prep_s = time.perf_counter() - t0
        rows.append(("prepare default corpus from scratch", f"{prep_s:.1f} s",
                     f"num_proc={args.num_proc}, vocab {args.vocab_size}, {os.cpu_count()} CPUs visible"))

        docs = [d["text"] for d in load_corpus("sotu")]
        encoder = DocumentEncoder(out_dir / "tokenizer")
        # Per core = tokens per CPU-second of this process (fair on a shared machine); wall rate in the note.
        t0, c0 = time.perf_counter(), time.process_time()
        n_tokens = sum(len(ids) for ids in encoder.encode(docs))  # cold word cache
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(("tokenize, prepare_data encoder, per core", f"{n_tokens / cpu / 1e6:.2f} M tokens/s",
                     f"{n_tokens:,} tokens, cold cache, {n_tokens / wall / 1e6:.2f} M/s wall; target >= 1 M"))
        tok = load_tokenizer(out_dir)
        t0, c0 = time.perf_counter(), time.process_time()
        n_hf = sum(len(ids) for ids in tok(docs, add_special_tokens=False)["input_ids"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(("tokenize, plain HF tokenizer call, per core", f"{n_hf / cpu / 1e6:.2f} M tokens/s",
                     f"{n_hf / wall / 1e6:.2f} M/s wall; " + ("same ids" if n_hf == n_tokens else "TOKEN COUNT DIFFERS")))

        train = PackedTokens(out_dir, "train")
        loader = WindowLoader(train, args.seq_len, args.batch_size, seed=0)
        loader_rate, _ = timed(lambda: next(loader), 2.0)
        rows.append((f"WindowLoader batches/s ({args.batch_size} x {args.seq_len})", f"{loader_rate:,.0f}",
                     f"{loader_rate * args.batch_size * args.seq_len / 1e6:.1f} M tokens/s"))
        for mode in [m for m in args.modes.split(",") if m]:
            steps = model_steps_per_s(len(tok), args.seq_len, args.batch_size, mode)
            rows.append((f"tiny model ({mode}) train steps/s, same batch", f"{steps:.2f}",
                         f"loader is {loader_rate / steps:,.0f}x faster"))

    width = max(len(r[0]) for r in rows)
    print(f"| {'measurement':<{width}} | value | note |")
    print(f"|{'-' * (width + 2)}|-------|------|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value} | {note} |")


if __name__ == "__main__":
    main()
