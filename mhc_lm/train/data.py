"""Glue between the run config and `mhc_lm.data`: the per-rank train loader, a fresh validation
loader per evaluation (so every evaluation sees the same windows), and the tokenizer.

`Trainer` accepts any `DataBundle`, so tests can feed a tiny in-memory loader with the same
interface as `WindowLoader` (iterable of {"input_ids", "labels"} (B, T) batches, `state_dict`,
`load_state_dict`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable


@dataclass
class DataBundle:
    train_loader: Any
    """Infinite per-rank iterable of {"input_ids", "labels"} batches with state_dict/load_state_dict."""
    make_val_loader: Callable[[], Iterable] | None
    """Returns a fresh, deterministic per-rank validation iterable (None = no validation)."""
    vocab_size: int
    """Token ids are < vocab_size."""
    seq_len: int
    """Window length T of every batch."""
    tokenizer: Any = None
    """transformers tokenizer saved next to the exported model (None: export without one)."""
    prepared_dir: Path | None = None
    """The data preparation directory (recorded in meta.json)."""


def build_data(config, accelerator) -> DataBundle:
    """Prepare (main process first, idempotent) and open the corpus of `config.data`. Data errors
    (a missing file, a corpus shorter than one window, a damaged shard or tokenizer) are raised as
    ConfigError: the user's input, one line, exit code 2."""
    from mhc_lm.config_utils import ConfigError
    from mhc_lm.train.faults import write_cause

    try:
        return _build_data(config, accelerator)
    except ConfigError:
        raise
    except OSError as err:
        if write_cause(err) is not None:  # a full disk / read-only data cache: reported as a write fault
            raise
        raise ConfigError(f"data: {_one_line(err)}") from err
    except (ValueError, KeyError) as err:
        raise ConfigError(f"data: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, FileNotFoundError)) else f"{type(err).__name__}: {text}"


def _build_data(config, accelerator) -> DataBundle:
    from mhc_lm.data import PackedTokens, WindowLoader, load_tokenizer

    out_dir = prepare_on_main(config.data, accelerator)
    tokenizer = load_tokenizer(out_dir)
    train = PackedTokens(out_dir, split="train")
    seq_len = config.data.seq_len
    rank, world, micro = accelerator.process_index, accelerator.num_processes, config.train.micro_batch_size
    loader = WindowLoader(train, seq_len, micro, rank=rank, world_size=world,
                          seed=config.data.order_seed_for(config.train.seed),  # replicates differ in order
                          step_windows=config.train.batch_size)  # epochs end on optimizer-step boundaries
    try:
        val = PackedTokens(out_dir, split="val")
    except (FileNotFoundError, ValueError, KeyError):
        val = None

    def make_val_loader():
        return WindowLoader(val, seq_len, micro, rank=rank, world_size=world, seed=config.data.seed + 1)

    if val is not None:
        try:
            windows = make_val_loader().num_windows
        except ValueError as err:  # validation split smaller than one global batch
            if accelerator.is_main_process:
                print(f"[mhc-lm] no validation loss: {err}", flush=True)
            val = None
        else:
            wanted = config.train.eval_batches * config.train.batch_size
            if wanted > windows and accelerator.is_main_process:
                warnings.warn(f"validation reads train.eval_batches x train.batch_size = {wanted} windows but the val "
                              f"split holds {windows} of seq_len+1 = {seq_len + 1} tokens: windows repeat, so val_loss "
                              f"averages fewer distinct tokens than it seems. Use train.eval_batches <= "
                              f"{windows // config.train.batch_size} or give the split more text (data.val_fraction, "
                              "data.val_files).", stacklevel=2)
    vocab = max(int(train.vocab_size), len(tokenizer))
    return DataBundle(loader, make_val_loader if val is not None else None, vocab, seq_len, tokenizer, out_dir)


def _status_file(out_dir) -> Path:
    out = Path(out_dir).expanduser().absolute()
    return out.with_name(f".{out.name}.prepare_status.json")


def prepare_on_main(data_config, accelerator, poll_s: float = 2.0, report_every_s: float = 300.0) -> Path:
    """`prepare_data` on the main process; the other processes wait on a status file it writes.

    A first preparation of a large corpus takes hours (tokenizer training, tokenizing ~10B
    tokens). Waiting for it in a collective (a barrier, as `main_process_first` does) meets the
    process-group timeout (30 min, NCCL watchdog) and kills the job; polling a file does not.
    One quick broadcast first gives this launch a token, so a status file left by an earlier
    launch is never taken for this one. The other ranks then open the same folder with
    `prepare_data` (a reuse check). Multi-node: data.out_dir must be on a filesystem all nodes
    see, or be prepared beforehand with `python launch/prepare_data.py` on each node.
    """
    from mhc_lm.data import prepare_data

    if accelerator.num_processes == 1:
        return Path(prepare_data(data_config))
    from accelerate.utils import broadcast_object_list

    token = broadcast_object_list([uuid.uuid4().hex if accelerator.is_main_process else None], from_process=0)[0]
    status = _status_file(data_config.out_dir)
    if accelerator.is_main_process:
        state = {"token": token, "ok": False, "error": None}
        try:
            out = Path(prepare_data(data_config))
            state["ok"] = True
            return out
        except BaseException as err:
            state["error"] = f"{type(err).__name__}: {err}"
            raise
        finally:
            status.parent.mkdir(parents=True, exist_ok=True)
            tmp = status.with_name(status.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, status)
    start = last_report = time.monotonic()
    while True:
        try:
            state = json.loads(status.read_text())
        except (FileNotFoundError, ValueError):
            state = None
        if state is not None and state.get("token") == token:
            break
        now = time.monotonic()
        if now - last_report >= report_every_s and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"[mhc-lm] rank {accelerator.process_index}: waiting for rank 0 to prepare {data_config.out_dir} "
                  f"({(now - start) / 60:.0f} min so far; its progress is in rank 0's log)", flush=True)
            last_report = now
        time.sleep(poll_s)
    if not state.get("ok"):
        from mhc_lm.config_utils import ConfigError  # rank 0 raised the error itself (one line there)

        raise ConfigError(f"data preparation failed on rank 0 ({state.get('error')}); see rank 0's log. "
                           "Fix the data settings, or prepare first with `python launch/prepare_data.py --config ...`")
    return Path(prepare_data(data_config))
