"""Zero-shot GLUE: log-likelihood scoring of label verbalisations, as lm-evaluation-harness does.

For each dev example and each choice c of the task, the request is
(context = prompt(doc), continuation = " " + c), tokenised exactly as lm-evaluation-harness'
`LM._encode_pair` does (trailing context spaces move to the continuation; the whole string is
encoded and the context's tokens cut off its front), left-truncated to max_length + 1 tokens
and scored by the sum of log p(continuation tokens). The prediction is the choice with the
highest sum (`acc` of its `multiple_choice` output type, no length normalisation), so
`python -m evals.glue --protocol zeroshot` and `lm_eval --tasks glue` agree on each example.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import load_split
from .metrics import compute_metrics, flatten_split_metrics, task_score
from .tasks import TaskSpec

TARGET_DELIMITER = " "  # lm-evaluation-harness' default target_delimiter


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness `LM._encode_pair` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def score_requests(model, requests: Sequence[tuple[list[int], list[int]]], max_length: int,
                   batch_size: int = 32, pad_token_id: int = 0, device=None,
                   progress: bool = True, desc: str = "zero-shot") -> list[float]:
    """Sum of log p(continuation | context) for each (context_ids, continuation_ids)."""
    device = device or next(model.parameters()).device
    seqs = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation encoded to no tokens; check the tokenizer")
        full = (ctx + cont)[-(max_length + 1):]
        seqs.append((full[:-1], full[1:], len(cont)))  # inputs, next-token targets, tokens scored
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))  # longest first: least padding
    out = [0.0] * len(seqs)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        T = max(len(seqs[i][0]) for i in idx)
        inputs = torch.full((len(idx), T), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(seqs[i][0])
            inputs[row, :n] = torch.tensor(seqs[i][0])
            mask[row, :n] = 1
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(idx):
            inp, tgt, n_cont = seqs[i]
            n = len(inp)
            picked = logprobs[row, n - n_cont:n].gather(-1, torch.tensor(tgt[-n_cont:], device=device)[:, None])
            out[i] = float(picked.sum())
    return out


def zeroshot_split(model, tokenizer, spec: TaskSpec, docs, max_length: int, batch_size: int,
                   device=None, progress: bool = True) -> dict:
    """Predictions, per-choice log-likelihoods and metrics of one dev split."""
    if spec.prompt is None:
        raise ValueError(f"{spec.name}: no zero-shot prompt (lm-evaluation-harness has no {spec.name} task)")
    requests = []
    for doc in docs:
        context = spec.prompt(doc)
        requests += [encode_pair(tokenizer, context, TARGET_DELIMITER + c) for c in spec.choices]
    scores = score_requests(model, requests, max_length, batch_size, tokenizer.pad_token_id, device,
                            progress, desc=f"{spec.name} zero-shot")
    k = len(spec.choices)
    loglik = [scores[i * k:(i + 1) * k] for i in range(len(docs))]
    preds = [max(range(k), key=lambda c: row[c]) for row in loglik]
    labels = [int(x) for x in docs["label"]]
    return {"metrics": compute_metrics(spec, preds, labels), "predictions": preds,
            "labels": labels, "loglikelihoods": loglik}


def zeroshot_task(spec: TaskSpec, model, tokenizer, zs_config, data_dir=None, device=None,
                  progress: bool = True) -> dict:
    """The task result (metrics per dev split, flattened, score) of the zero-shot protocol."""
    t0 = time.time()
    max_length = zs_config.max_length or getattr(model.config, "max_position_embeddings", 2048)
    per_split, samples, n_dev = {}, {}, {}
    for split in spec.dev_splits:
        docs = load_split(spec, split, data_dir, zs_config.max_eval_samples)
        res = zeroshot_split(model, tokenizer, spec, docs, max_length, zs_config.batch_size, device, progress)
        per_split[split] = res["metrics"]
        samples[split] = [{"loglikelihoods": ll, "prediction": p, "label": y}
                          for ll, p, y in zip(res["loglikelihoods"], res["predictions"], res["labels"])]
        n_dev[split] = len(docs)
    metrics = flatten_split_metrics(spec, per_split)
    return {"task": spec.name, "protocol": "zeroshot", "metrics": metrics, "score": task_score(metrics),
            "per_split": per_split, "n_dev": n_dev, "choices": list(spec.choices),
            "settings": {"max_length": max_length, "batch_size": zs_config.batch_size,
                         "max_eval_samples": zs_config.max_eval_samples},
            "time_s": round(time.time() - t0, 2), "samples": samples}
