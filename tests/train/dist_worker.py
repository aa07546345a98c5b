"""2-process workers of tests/train/test_distributed_defects.py (issue 16), started with
`python -m torch.distributed.run --standalone --nproc_per_node 2 dist_worker.py MODE OUT_DIR [args]`.

    fsdp             FSDP1 over gloo on CPU: the stability probe at step 0 and dtypes inside forward
    data_wait P T    rank 0 "prepares data" for P seconds under a process-group timeout of T seconds
    data_fail        rank 0's preparation raises: every rank must stop with its message
    accelerate_fsdp  (GPU) the trainer under `accelerate launch` with an FSDP config
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from datetime import timedelta  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def _fake_trainer(model, unwrapped, batch, rank, world, run_dir):
    from accelerate.utils import DistributedType

    lines = []

    def reduce(t, op):
        t = t.clone()
        dist.all_reduce(t)
        return t / world if op == "mean" else t

    acc = types.SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=world, is_main_process=rank == 0,
                                reduce=reduce, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
                                state=types.SimpleNamespace())
    config = types.SimpleNamespace(train=types.SimpleNamespace(max_steps=10),
                                   logging=types.SimpleNamespace(log_every=1))
    return types.SimpleNamespace(accelerator=acc, model=model, unwrapped_model=unwrapped, probe_batch=batch,
                                 config=config, step=0, run_dir=run_dir,
                                 writer=types.SimpleNamespace(write=lines.append)), lines


def fsdp(out_dir: Path) -> None:
    import copy

    from accelerate.utils import extract_model_from_parallel
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mhc_lm.metrics import MetricsConfig
    from mhc_lm.metrics.callbacks import ProbeCallback
    from mhc_lm.metrics.probe import eval_mode, probe_model
    from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM
    from mhc_lm.model.modeling_mhc_lm import MhcLmDecoderLayer
    from mhc_lm.train.distributed import fsdp_plugin
    from tests.train.helpers import TINY_MODEL

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = MhcLmForCausalLM(MhcLmConfig(**{**TINY_MODEL, "residual_mode": "mhc"}))
    reference = copy.deepcopy(model)
    ids = torch.randint(0, TINY_MODEL["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(rank))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    with eval_mode(reference), torch.autocast("cpu", dtype=torch.bfloat16):
        ref_probe = probe_model(reference, batch, gradients=False)

    os.environ["ACCELERATE_USE_FSDP"] = "true"  # what `accelerate launch` with an FSDP config sets
    plugin = fsdp_plugin()
    plugin.set_mixed_precision("bf16")  # what Accelerate applies for train.mixed_precision=bf16
    wrapped = FSDP(model, auto_wrap_policy=ModuleWrapPolicy({MhcLmDecoderLayer}), use_orig_params=True,
                   mixed_precision=plugin.mixed_precision_policy, device_id=torch.device("cpu"))
    unwrapped = extract_model_from_parallel(wrapped)  # what accelerator.unwrap_model returns

    # finding 2: the probe at step 0 (probe_at_init), as ProbeCallback runs it in the trainer
    trainer, lines = _fake_trainer(wrapped, unwrapped, batch, rank, world, out_dir)
    ProbeCallback(MetricsConfig(probe_every=5)).on_train_begin(trainer)
    probe = lines[0] if rank == 0 else None  # {"step": 0, probe values...}, written by the main process

    # finding 5: dtypes inside forward under bf16 autocast, and the dtype FSDP reduces gradients in
    seen: dict = {}

    def record(prefix):
        def hook(module, args):
            for name, p in module.named_parameters(recurse=False):
                seen[f"{prefix}.{name}"] = str(p.dtype)
        return hook

    inner = unwrapped.model
    mixing = inner.layers[0].attn_mixing
    mixing = getattr(mixing, "_fsdp_wrapped_module", mixing)
    handles = [inner.embed_tokens.register_forward_pre_hook(record("embed_tokens")),
               inner.norm.register_forward_pre_hook(record("norm")),
               mixing.register_forward_pre_hook(record("layers.0.attn_mixing"))]
    streams, matmul = {}, {}

    def output_dtype(into):
        def hook(module, args, out):
            into.setdefault("dtype", str((out[0] if isinstance(out, tuple) else out).dtype))
        return hook

    handles.append(inner.layers[0].register_forward_hook(output_dtype(streams)))
    q_proj = [m for n, m in unwrapped.named_modules() if n.endswith("q_proj")][0]
    handles.append(q_proj.register_forward_hook(output_dtype(matmul)))
    wrapped.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = wrapped(input_ids=batch["input_ids"], shift_labels=batch["labels"]).loss
    loss.backward()
    for h in handles:
        h.remove()
    reduce_dtypes = sorted({str(m._handle._reduce_dtype) for m in FSDP.fsdp_modules(wrapped) if m._handle is not None})
    if rank == 0:
        report = {"reference_probe": ref_probe, "fsdp_probe": {k: v for k, v in probe.items() if k != "step"},
                  "param_dtypes_in_forward": seen, "stream_dtype": streams["dtype"], "reduce_dtypes": reduce_dtypes,
                  "matmul_dtype": matmul["dtype"]}
        (out_dir / "fsdp_report.json").write_text(json.dumps(report, indent=1))
        print("FSDP OK", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def _accelerator(timeout_s: float):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    return Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo",
                                                                         timeout=timedelta(seconds=timeout_s))])


def data_wait(out_dir: Path, prep_s: str, timeout_s: str) -> None:
    import mhc_lm.data
    from mhc_lm.data import DataConfig
    from mhc_lm.train.data import prepare_on_main

    acc = _accelerator(float(timeout_s))
    calls = []

    def slow_prepare(cfg, progress=True):  # rank 0: a long first preparation; the others: the reuse check
        calls.append(time.monotonic())
        if acc.is_main_process:
            time.sleep(float(prep_s))
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out_dir) / "meta.json").write_text("{}")
        elif not (Path(cfg.out_dir) / "meta.json").is_file():
            raise AssertionError("a waiting rank opened the data before rank 0 finished preparing it")
        return Path(cfg.out_dir)

    mhc_lm.data.prepare_data = slow_prepare
    out = prepare_on_main(DataConfig(out_dir=str(out_dir / "data")), acc, poll_s=0.2)
    acc.wait_for_everyone()  # a collective right after: every rank is back in step
    assert out == out_dir / "data" and len(calls) == 1
    print(f"DATA OK rank {acc.process_index}", flush=True)
    acc.wait_for_everyone()
    dist.destroy_process_group()


def data_fail(out_dir: Path) -> None:
    import mhc_lm.data
    from mhc_lm.data import DataConfig
    from mhc_lm.train.data import prepare_on_main

    acc = _accelerator(60)

    def failing(cfg, progress=True):
        if acc.is_main_process:
            raise ValueError("corpus has no text column 'txt'")
        raise AssertionError("a waiting rank prepared data after rank 0 failed")

    mhc_lm.data.prepare_data = failing
    try:
        prepare_on_main(DataConfig(out_dir=str(out_dir / "data")), acc, poll_s=0.2)
    except (ValueError, RuntimeError) as err:
        if "corpus has no text column 'txt'" in str(err):
            print(f"DATA FAILED ON RANK 0 SEEN by rank {acc.process_index}", flush=True)
    # the end-of-run export runs on the main process alone: its failure must reach the other ranks
    # (they used to wait in a barrier until the collective timeout)
    from mhc_lm.train.export import on_main_process

    def export():
        raise ValueError("pytorch_model/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt is not a zero checkpoint")

    try:
        on_main_process(acc, export, "export")
    except (ValueError, RuntimeError) as err:
        if "is not a zero checkpoint" in str(err):
            print(f"EXPORT FAILED ON RANK 0 SEEN by rank {acc.process_index}", flush=True)
    acc.wait_for_everyone()
    dist.destroy_process_group()


def accelerate_fsdp(out_dir: Path) -> None:
    """GPU only: the real trainer under `accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml`."""
    from mhc_lm.metrics import build_callbacks
    from mhc_lm.train import Trainer
    from mhc_lm.train.distributed import build_accelerator, shutdown
    from tests.train.helpers import tiny_config, toy_data

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = tiny_config(out_dir / "run", "mhc", train={"mixed_precision": "bf16", "max_steps": 2, "batch_size": 2 * world},
                      metrics={"enabled": True, "probe_every": 1})
    acc = build_accelerator(cfg)
    trainer = Trainer(cfg, data=toy_data(cfg, acc.process_index, acc.num_processes), accelerator=acc,
                      callbacks=build_callbacks(cfg))
    seen = {}
    mixing = trainer.unwrapped_model.model.layers[0].attn_mixing
    mixing = getattr(mixing, "_fsdp_wrapped_module", mixing)
    handle = mixing.register_forward_pre_hook(
        lambda m, a: seen.update({n: str(p.dtype) for n, p in m.named_parameters(recurse=False)}))
    trainer.fit()
    handle.remove()
    if acc.is_main_process:
        lines = [json.loads(x) for x in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
        step0 = next(r for r in lines if r["step"] == 0)
        (out_dir / "fsdp_report.json").write_text(json.dumps({"param_dtypes_in_forward": seen, "step0_probe": step0}))
    del trainer, mixing, handle
    shutdown(acc)


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    {"fsdp": fsdp, "data_wait": data_wait, "data_fail": data_fail,
     "accelerate_fsdp": accelerate_fsdp}[mode](out, *sys.argv[3:])
