"""Fine-tuning protocol: the pretrained decoder plus a fresh head on the last token, per task.

Follows the GPT/BERT recipe of Radford et al. (2018) and Devlin et al. (2019, arXiv 1810.04805):
  input  = text_a [eos] text_b [eos]   (single-sentence tasks: text_a [eos])
  logits = score(h_last)               MhcLmForSequenceClassification pools the last non-pad token
  loss   = cross-entropy, or MSE for STS-B (num_labels == 1)
AdamW (the pretraining decay groups, `mhc_lm.train.optim.param_groups`: no weight decay on norms,
gates, biases and mixing parameters) with linear warmup and decay, dev evaluation every
`eval_every` steps (or epoch), early stopping after `patience` evaluations without a better dev
score; the best evaluation is reported.
Accelerate places the model on the available device(s) (CPU, one or several GPUs).
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mhc_lm.train.optim import optimizer_groups

from .data import load_split
from .metrics import compute_metrics, flatten_split_metrics, task_score
from .model_io import load_classifier
from .tasks import TaskSpec


def join_and_truncate(parts: list[list[int]], eos: int, max_len: int) -> list[int]:
    """text_a [eos] (text_b [eos]); the longer text is cut first so the whole fits max_len."""
    parts = [list(p) for p in parts]
    budget = max_len - len(parts)  # one eos after each text
    while sum(map(len, parts)) > budget:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        parts[longest] = parts[longest][:-1]
    ids: list[int] = []
    for p in parts:
        ids += p + [eos]
    return ids


def _eos(tokenizer) -> int:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id


def encode_example(tokenizer, texts: list[str], max_len: int) -> list[int]:
    """One example: the first text with the tokenizer's own special tokens, then the second."""
    parts = [tokenizer.encode(t, add_special_tokens=(i == 0)) for i, t in enumerate(texts)]
    return join_and_truncate(parts, _eos(tokenizer), max_len)


def encode_split(tokenizer, spec: TaskSpec, ds, max_len: int, chunk: int = 10_000) -> list[dict]:
    """All examples of a split; batched tokenisation (fast tokenizers encode in parallel)."""
    eos, labels, out = _eos(tokenizer), ds["label"], []
    columns = [ds[c] for c in spec.text_columns]
    for start in range(0, len(ds), chunk):
        encoded = [tokenizer([t for t in col[start:start + chunk]], add_special_tokens=(i == 0))["input_ids"]
                   for i, col in enumerate(columns)]
        for j, parts in enumerate(zip(*encoded)):
            out.append({"input_ids": join_and_truncate(parts, eos, max_len), "label": labels[start + j]})
    return out


def make_collate(pad_token_id: int, regression: bool):
    def collate(batch: list[dict]) -> dict:
        T = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), T), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, b in enumerate(batch):  # right padding; the head pools the last non-pad token
            ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
            mask[i, :len(b["input_ids"])] = 1
        labels = torch.tensor([b["label"] for b in batch], dtype=torch.float if regression else torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return collate


@torch.no_grad()
def evaluate(model, loader, accelerator, spec: TaskSpec) -> dict[str, float]:
    model.eval()
    preds, golds = [], []
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        p = logits[:, 0].float() if spec.is_regression else logits.argmax(-1)
        p, y = accelerator.gather_for_metrics((p, batch["labels"]))
        preds.append(p.cpu())
        golds.append(y.cpu())
    model.train()
    return compute_metrics(spec, torch.cat(preds).numpy(), torch.cat(golds).numpy())


def finetune_task_seed(spec: TaskSpec, model_dir, tokenizer, hp, seed: int, accelerator,
                       data_dir=None, progress: bool = True) -> dict:
    """Fine-tune once (one seed) and return the best dev evaluation."""
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    t0 = time.time()
    set_seed(seed)
    train = load_split(spec, "train", data_dir).shuffle(seed=seed)
    if hp.max_train_samples is not None and hp.max_train_samples < len(train):
        train = train.select(range(hp.max_train_samples))
    devs = {s: load_split(spec, s, data_dir, hp.max_eval_samples) for s in spec.dev_splits}
    collate = make_collate(tokenizer.pad_token_id, spec.is_regression)
    per_device = max(1, hp.batch_size // accelerator.num_processes)
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(encode_split(tokenizer, spec, train, hp.max_seq_len), batch_size=per_device,
                          shuffle=True, collate_fn=collate, generator=gen, drop_last=False)
    dev_dls = {s: DataLoader(encode_split(tokenizer, spec, d, hp.max_seq_len), batch_size=hp.eval_batch_size,
                             shuffle=False, collate_fn=collate) for s, d in devs.items()}

    model = load_classifier(model_dir, spec.num_labels, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(optimizer_groups(model, hp.weight_decay), lr=hp.learning_rate)
    steps_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes)
    total = hp.max_steps if hp.max_steps is not None else max(1, math.ceil(hp.num_epochs * steps_per_epoch))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
    # The scheduler stays out of accelerator.prepare: Accelerate's wrapper steps it once per
    # process per optimizer step, which would end the schedule after total / num_processes steps.
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    dev_dls = {s: accelerator.prepare(dl) for s, dl in dev_dls.items()}
    eval_every = hp.eval_every or steps_per_epoch

    best: dict | None = None
    history, bad_evals, step, stopped_early = [], 0, 0, False
    bar = tqdm(total=total, desc=f"{spec.name} seed {seed}", disable=not (progress and accelerator.is_main_process),
               leave=False)
    model.train()
    while step < total and not stopped_early:
        for batch in train_dl:
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            loss = model(**batch).loss
            accelerator.backward(loss)
            if hp.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{best['score']:.4f}" if best else "-")
            if step % eval_every == 0 or step == total:
                per_split = {s: evaluate(model, dl, accelerator, spec) for s, dl in dev_dls.items()}
                metrics = flatten_split_metrics(spec, per_split)
                entry = {"step": step, "epoch": round(step / steps_per_epoch, 3), "train_loss": loss.item(), "lr": lr,
                         "metrics": metrics, "score": task_score(metrics), "per_split": per_split}
                history.append(entry)
                if best is None or entry["score"] > best["score"]:
                    best, bad_evals = entry, 0
                else:
                    bad_evals += 1
                    if hp.patience and bad_evals >= hp.patience:
                        stopped_early = True
                        break
            if step >= total:
                break
    bar.close()
    accelerator.free_memory()
    del model, optimizer
    return {"seed": seed, "best_step": best["step"], "metrics": best["metrics"], "score": best["score"],
            "per_split": best["per_split"], "steps": step, "stopped_early": stopped_early,
            "history": history, "n_train": len(train), "n_dev": {s: len(d) for s, d in devs.items()},
            "time_s": round(time.time() - t0, 2)}


def finetune_task(spec: TaskSpec, model_dir, tokenizer, hp, seeds: list[int], accelerator,
                  data_dir=None, progress: bool = True) -> dict:
    """All seeds of one task; metrics are the mean over seeds (each seed at its best dev step)."""
    runs = [finetune_task_seed(spec, model_dir, tokenizer, hp, s, accelerator, data_dir, progress) for s in seeds]
    metrics = {k: sum(r["metrics"][k] for r in runs) / len(runs) for k in runs[0]["metrics"]}
    return {"task": spec.name, "protocol": "finetune", "metrics": metrics, "score": task_score(metrics),
            "seeds": seeds, "per_seed": runs, "n_train": runs[0]["n_train"], "n_dev": runs[0]["n_dev"],
            "time_s": round(sum(r["time_s"] for r in runs), 2)}
