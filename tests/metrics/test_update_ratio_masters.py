"""Issue 16, finding 7: under DeepSpeed bf16 the update ratio is measured on the fp32 masters.

The module holds bf16 copies there; an update below bf16 resolution (~2^-8 relative) leaves them
unchanged and the ratio read 0. These CPU tests give the ratio functions a model with bf16
weights and fp32 masters, whole or split into per-rank pieces as ZeRO-1/2 partitions them
(the 2-process DeepSpeed run is in tests/train/test_distributed_defects.py)."""

import math
import types

import pytest
import torch
from torch import nn

from mhc_lm.metrics.update import NOT_MANAGED, snapshot, update_ratios


class Bf16Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Linear(8, 8, bias=False)])
        self.model.norm = nn.Linear(4, 1, bias=False)
        self.to(torch.bfloat16)  # DeepSpeed builds the fp32 masters from the bf16 weights
        self.masters = {n: p.detach().float().clone() for n, p in self.named_parameters()}

    @torch.no_grad()
    def step(self, rel: float):
        """An optimizer step of relative size `rel` on the masters, copied (rounded) into the bf16 weights."""
        for n, p in self.named_parameters():
            self.masters[n].mul_(1 + rel)
            p.copy_(self.masters[n])


def _expected(model: Bf16Toy, before: dict) -> float:
    d = sum((model.masters[n].double() - before[n].double()).pow(2).sum() for n in before)
    s = sum(before[n].double().pow(2).sum() for n in before)
    return math.sqrt(d / s)


def test_update_below_bf16_resolution_reads_zero_on_the_module_but_not_on_the_masters():
    model = Bf16Toy()
    by_param = {p: model.masters[n] for n, p in model.named_parameters()}
    master = by_param.__getitem__
    before_module, before_master = snapshot(model), snapshot(model, master)
    before_copy = {n: t.clone() for n, t in before_master.items()}
    model.step(1e-4)  # 100x below bf16's relative resolution
    assert update_ratios(before_module, model)["update_ratio/global"] == 0.0  # what the metric used to log
    got = update_ratios(before_master, model, master)
    assert got["update_ratio/global"] == pytest.approx(1e-4, rel=1e-3)
    assert got["update_ratio/global"] == pytest.approx(_expected(model, before_copy), rel=1e-6)
    assert got["update_ratio/layer_00"] == pytest.approx(1e-4, rel=1e-3)


def test_pieces_of_partitioned_masters_summed_over_ranks():
    """Two simulated ranks each hold a disjoint 1-D piece of every master (None where they hold
    nothing); `reduce` sums their squared norms: the same ratio as the whole masters."""
    model = Bf16Toy()
    names = {p: n for n, p in model.named_parameters()}
    cut = {"model.layers.0.weight": 24, "model.norm.weight": 4}  # rank 0 holds the whole norm weight

    def piece(rank):
        def master(p):
            flat, c = model.masters[names[p]].view(-1), cut[names[p]]
            part = flat[:c] if rank == 0 else flat[c:]
            return part if part.numel() else None
        return master

    whole = {p: model.masters[n] for n, p in model.named_parameters()}.__getitem__
    before = [snapshot(model, piece(r)) for r in (0, 1)]
    before_whole = snapshot(model, whole)
    model.step(3e-4)
    summed = []  # each rank's (groups, 2) sums, as a fake all-reduce sees them
    for r in (0, 1):
        update_ratios(before[r], model, piece(r), reduce=lambda t: (summed.append(t) or t))
    assert len(summed) == 2 and summed[0].shape == summed[1].shape == (3, 2)  # same slots on both ranks
    total = summed[0] + summed[1]
    want = update_ratios(before_whole, model, whole)
    got = {f"update_ratio/{g}": math.sqrt(d / s) for g, (d, s) in zip(["global", "layer_00", "other"], total.tolist())}
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_not_managed_parameters_are_measured_on_the_module():
    model = Bf16Toy()
    before = snapshot(model, lambda p: NOT_MANAGED)
    model.step(0.05)  # large enough for bf16 to see
    assert update_ratios(before, model, lambda p: NOT_MANAGED) == update_ratios(before, model)


def test_callback_reads_deepspeed_fragments():
    """The callback's master function: a ZeRO-1/2 / BF16_Optimizer parameter (`_hp_mapping`) gives
    its local fp32 fragment; one this rank holds none of gives None; a plain one the module."""
    from accelerate.utils import DistributedType

    from mhc_lm.metrics.callbacks import _fp32_masters

    acc = types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=2, is_main_process=False,
                                reduce=lambda t, op: t)
    master, reduce = _fp32_masters(acc)
    frag = torch.ones(3)
    held = nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    held._hp_mapping = types.SimpleNamespace(get_hp_fragment=lambda: frag)
    elsewhere = nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    elsewhere._hp_mapping = None
    plain = nn.Parameter(torch.zeros(4))
    assert master(held) is frag and master(elsewhere) is None and reduce is not None
    assert master(plain) is None  # replicated: counted on the main process only
    acc.is_main_process = True
    assert master(plain) is NOT_MANAGED
    acc.distributed_type = DistributedType.MULTI_CPU
    assert _fp32_masters(acc) == (None, None)
