"""The pretraining loop: Accelerate (DDP / FSDP / DeepSpeed), gradient accumulation, clipping,
AdamW + warmup/cosine or WSD, atomic checkpoints with exact resume, JSONL metrics, callbacks.

    trainer = Trainer(load_run_config("configs/tiny_cpu.yaml"))
    trainer.fit()

One optimizer step consumes `train.batch_size` sequences: `micro_batch_size` per forward on each
of `world_size` processes, `accumulation` times. Because the global batch is fixed by the config,
1 process and N processes follow the same trajectory (up to float reduction order).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mhc_lm.config_utils import ConfigError
from mhc_lm.run_dir import Divergence, RunDir
from mhc_lm.train import checkpoint as ckpt_lib
from mhc_lm.train import init_from, resume_with, run_lock, state_io
from mhc_lm.train.config import RunConfig, build_model_config
from mhc_lm.train.data import DataBundle, build_data
from mhc_lm.train.distributed import apply_activation_checkpointing, apply_compile, build_accelerator
from mhc_lm.train.diverged import TrainingDiverged
from mhc_lm.train.host_memory import keep_freed_memory
from mhc_lm.train.optim import build_optimizer, build_scheduler
from mhc_lm.train.progress import ProgressLog
from mhc_lm.train.resume import RunDirResume
from mhc_lm.train.run_log import MetricsWriter, default_peak_tflops, flops_per_token, memory_stats
from mhc_lm.train.spike_policy import SpikePolicy
from mhc_lm.train.z_loss import ZLoss

MAX_FP16_OVERFLOWS = 20
"""Consecutive fp16 loss-scale overflows (skipped steps) after which the run counts as diverged."""


class Trainer(RunDirResume):
    """Attributes used by callbacks: accelerator, model (prepared), unwrapped_model, config,
    probe_batch, step, run_dir (see docs/CONTRACTS.md)."""

    def __init__(self, config: RunConfig, data: DataBundle | None = None, callbacks=None, accelerator=None):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.accelerator = acc = accelerator or build_accelerator(config)
        self.world_size = acc.num_processes
        self.accumulation = acc.gradient_accumulation_steps
        if acc.device.type == "cpu" and config.train.keep_host_memory:
            keep_freed_memory()  # torch's CPU allocator caches nothing: no page faults on each step's tensors
        set_seed(config.train.seed)
        self.data = data if data is not None else build_data(config, acc)

        from mhc_lm.model import MhcLmForCausalLM

        model_config = init_from.model_config(config) if config.train.init_from else build_model_config(config.model)
        self._check_model_vs_data(model_config)
        model = MhcLmForCausalLM(model_config)  # same seed on every rank: same init
        self.init_from = init_from.apply(self, model)  # train.init_from: its weights, unless resuming
        if config.train.activation_checkpointing:
            apply_activation_checkpointing(model)
        if config.train.compile:
            apply_compile(model)
        self.num_parameters = sum(p.numel() for p in model.parameters())  # before ZeRO-3 / FSDP shard them
        optimizer = build_optimizer(model, config.optim, acc.device.type, skip_step=config.train.on_spike == "skip")
        self.scheduler = build_scheduler(optimizer, config.optim, config.train.max_steps)
        # the scheduler stays out of prepare(): Accelerate would step it once per process
        # nor is it registered for checkpointing (Accelerate would pickle it): its state goes into trainer_state.json
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.unwrapped_model = acc.unwrap_model(self.model)

        self.step = 0
        self.tokens = 0
        self.tokens_per_step = config.train.batch_size * self.data.seq_len
        self.flops_per_token = flops_per_token(model_config, self.data.seq_len)
        self.peak_tflops = config.logging.peak_tflops or default_peak_tflops()
        self.writer = MetricsWriter(self.run_dir / "metrics.jsonl", acc.is_main_process)
        self.probe_batch = self._first_val_batch()
        self.callbacks = list(callbacks or [])  # only those handed in (launch/pretrain.py: mhc_lm.metrics's)
        self.z_loss = ZLoss(config.optim.z_loss)  # optim.z_loss != 0: an extra loss term, logged as z_loss
        if self.z_loss:
            self.callbacks.append(self.z_loss)
        self.spike_policy = SpikePolicy.attach(self)  # train.on_spike (mhc_lm/train/spike_policy.py)
        self._stop_signal: int | None = None
        self._last_saved_step = -1
        self._fp16_overflows = 0

    # ---------------------------------------------------------------- setup helpers
    def _check_model_vs_data(self, model_config) -> None:
        d = self.data
        if model_config.vocab_size < d.vocab_size:
            raise ConfigError(
                f"model.vocab_size={model_config.vocab_size} is smaller than the vocabulary of the tokenizer and "
                f"data{f' in {d.prepared_dir}' if d.prepared_dir else ''} ({d.vocab_size} ids): set "
                f"model.vocab_size={d.vocab_size} or more, or point data.* at a corpus tokenized with a smaller vocabulary")
        if model_config.max_position_embeddings < d.seq_len:
            raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_position_embeddings="
                              f"{model_config.max_position_embeddings}")
        tok = d.tokenizer
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if tok is not None and getattr(self.config.model, key) is None and getattr(tok, key, None) is not None:
                setattr(model_config, key, getattr(tok, key))

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}

    def _first_val_batch(self) -> dict | None:
        if self.data.make_val_loader is None:
            return None
        return self._to_device(next(iter(self.data.make_val_loader())))

    # ---------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            self._stop_signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0], device=self.accelerator.device)
        if self.world_size > 1:  # a signal may reach only some ranks: all must agree to stop
            flag = self.accelerator.reduce(flag, "sum")
        return bool(flag.item() > 0)

    # ---------------------------------------------------------------- checkpoint / eval
    def save_checkpoint(self, _fault_hook=None) -> Path:
        loader = self.data.train_loader
        loader_state = loader.state_dict() if hasattr(loader, "state_dict") else None
        state = {"tokens": self.tokens, "callbacks": self._callback_states(),
                 "scheduler": state_io.scheduler_state(self.scheduler), "settings": self._resume_settings()}
        path = ckpt_lib.save_checkpoint(self.accelerator, self.run_dir, self.step, state,
                                        loader_state, self.config.checkpoint.keep_last, _fault_hook=_fault_hook)
        self._last_saved_step = self.step
        return path

    def _stateful_callbacks(self) -> dict:
        """Callbacks with state_dict/load_state_dict, by `state_key` (default: class name)."""
        out = {}
        for cb in self.callbacks:
            if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict"):
                key = getattr(cb, "state_key", type(cb).__name__)
                if key in out:
                    raise ValueError(f"two callbacks share the checkpoint state key {key!r}; set `state_key`")
                out[key] = cb
        return out

    def _callback_states(self) -> dict:
        return {key: cb.state_dict() for key, cb in self._stateful_callbacks().items()}

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.data.make_val_loader is None:
            return None
        self.model.eval()
        total = torch.zeros((), device=self.accelerator.device)
        it = iter(self.data.make_val_loader())
        # eval_batches global batches = the first eval_batches x batch_size windows of the val order, whatever
        # the micro-batch size and world size (each rank reads its micro-batches of them), so val_loss
        # compares across launch layouts as the training losses do
        per_rank = self.config.train.eval_batches * self.accumulation
        for _ in range(per_rank):
            batch = self._to_device(next(it))
            total += self.model(input_ids=batch["input_ids"], shift_labels=batch["labels"]).loss.float()
        self.model.train()
        return self.accelerator.reduce(total / per_rank, "mean").item()

    # ---------------------------------------------------------------- the loop
    def train_step(self, batches) -> tuple[float, float]:
        """One optimizer step over `accumulation` micro-batches; returns (mean loss, grad norm)."""
        acc, cfg = self.accelerator, self.config.train
        loss_sum = torch.zeros((), device=acc.device)
        grad_norm = None
        for _ in range(self.accumulation):
            batch = self._to_device(next(batches))
            with acc.accumulate(self.model):
                out = self.model(input_ids=batch["input_ids"], shift_labels=batch["labels"])
                loss = out.loss
                acc.backward(loss + self.z_loss(out, batch["labels"]) if self.z_loss else loss)
                loss_sum += loss.detach().float()
                if acc.sync_gradients:
                    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
                    # check the loss, then optimizer.step(), as train.on_spike says (none: stop on NaN/Inf)
                    mean_loss, gn = self.spike_policy.apply(self, acc.reduce(loss_sum / self.accumulation, "mean"),
                                                            grad_norm)
                    self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return mean_loss, gn

    def _check_finite(self, loss: float, gn: float, has_norm: bool) -> None:
        """Stop on a non-finite loss or gradient norm, before the optimizer step and any checkpoint.

        fp16: an infinite norm is a loss-scale overflow that the grad scaler (or DeepSpeed's fp16
        optimizer) skips by itself; only MAX_FP16_OVERFLOWS of them in a row stop the run.
        DeepSpeed steps inside backward() at the accumulation boundary, so there the check comes
        after its step (a bf16 engine skips overflowing steps itself; an fp32 one has applied it);
        either way the run stops before anything is saved, and the last checkpoint is intact.
        """
        if not math.isfinite(loss):
            self._diverged(loss, gn)
        if not has_norm or math.isfinite(gn):
            self._fp16_overflows = 0
            return
        if self.accelerator.mixed_precision == "fp16":
            self._fp16_overflows += 1
            if self._fp16_overflows < MAX_FP16_OVERFLOWS:
                return
        self._diverged(loss, gn)

    def _diverged(self, loss: float, grad_norm: float, what: str | None = None, step: int | None = None):
        last = ckpt_lib.latest_checkpoint(self.run_dir)
        step = self.step + 1 if step is None else step
        what = what or f"non-finite loss/grad norm at step {step} (loss={loss}, grad_norm={grad_norm})"
        msg = (f"{what}; "
               f"stopping without saving. Last good checkpoint: {last or 'none'}. "
               + resume_with.divergence_advice())
        if self.accelerator.is_main_process:
            RunDir(self.run_dir).write_divergence(Divergence.at(step, loss, grad_norm, last, msg))
        raise TrainingDiverged(msg)

    def fit(self) -> str:
        """Train to max_steps (or until SIGTERM/SIGINT). Returns "completed" or "interrupted"."""
        lock = run_lock.acquire_for_run(self.accelerator, self.run_dir)  # before anything in run_dir is read or written
        try:
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _fit(self) -> str:
        acc, cfg = self.accelerator, self.config
        resume_path = self._resume_path()
        resume_state = ckpt_lib.read_state(resume_path) if resume_path is not None else None
        self._check_previous_run(resume_path, resume_state)
        self._resume(resume_path, resume_state)  # every check first: nothing is written before they pass
        self._prepare_run_dir(self.step)
        self._clear_previous_attempt(resume_path)
        start_step = self.step
        previous = self._install_signal_handlers()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self.model.train()
        batches = iter(self.data.train_loader)
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc=f"train {self.unwrapped_model.config.residual_mode}",
                   disable=None if (acc.is_main_process and cfg.logging.progress_bar) else True,  # None: off in logs
                   dynamic_ncols=True)
        progress = ProgressLog(cfg.train.max_steps, self.step, self.tokens_per_step, cfg.logging.log_every,
                               cfg.logging.progress_every_s, acc.is_main_process)  # plain lines when not a TTY
        status = "completed"
        try:
            while self.step < cfg.train.max_steps:
                t0 = time.perf_counter()
                lr = self.scheduler.get_last_lr()[0]
                loss, grad_norm = self.train_step(batches)
                if self.spike_policy.pending:  # on_spike=rewind vetoed this step: restore and go on
                    batches = self.spike_policy.rewind(self)
                    continue
                dt = time.perf_counter() - t0
                self.step += 1
                self.tokens += self.tokens_per_step
                logs = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                        "tokens_per_s": self.tokens_per_step / dt, "tokens": self.tokens, "step_time_s": dt}
                if self.peak_tflops:
                    logs["mfu"] = self.flops_per_token * logs["tokens_per_s"] / (self.peak_tflops * 1e12 * self.world_size)
                logs.update(memory_stats(acc.device))
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step, logs)
                if self.step % cfg.logging.log_every == 0 or self.step == cfg.train.max_steps:
                    self._log(logs)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                progress.update(self.step, logs)
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.max_steps:
                    self._log_val()
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
                if self._stop_requested():
                    status = "interrupted"
                    if self._last_saved_step != self.step:
                        self.save_checkpoint()
                    if acc.is_main_process:
                        print(f"\n[mhc-lm] stopped by signal at step {self.step}; checkpoint saved, "
                              "rerun the same command to resume", flush=True)
                    break
            if status == "completed":
                if self.step > start_step:  # a finished run rerun: nothing new to evaluate
                    self._log_val()
                if cfg.checkpoint.save_at_end and self._last_saved_step != self.step:
                    self.save_checkpoint()
                for cb in self.callbacks:
                    cb.on_train_end(self)
                if cfg.train.export_hf:
                    from mhc_lm.train.export import export_from_trainer

                    export_from_trainer(self)
        finally:
            bar.close()
            self.writer.close()
            for s, h in previous.items():
                signal.signal(s, h)
            if cfg.logging.trackers:
                acc.end_training()
        return status

    def _log(self, logs: dict) -> None:
        self.writer.write(logs)
        if self.config.logging.trackers:
            self.accelerator.log({k: v for k, v in logs.items() if k != "step"}, step=self.step)

    def _log_val(self) -> None:
        val = self.evaluate()
        if val is not None:
            self._log({"step": self.step, "val_loss": val})
