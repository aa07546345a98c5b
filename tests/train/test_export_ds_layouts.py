"""Issue 16, finding 1: reading fp32 masters from DeepSpeed checkpoints, on hand-written files with
the layouts DeepSpeed 0.19 writes (the 2-process run that writes real ones is in
test_distributed_defects.py).

BF16_Optimizer (bf16 + ZeRO-1): per parameter group the trainable parameters are flattened in
order, padded at the end to a multiple of the world size and split into equal partitions; rank R
saves partition R in fp32. ZeRO-2/3 under bf16 give their files the same `bf16_` name but record
a `zero_stage`, and must still go to DeepSpeed's own reader."""

from collections import OrderedDict

import pytest
import torch

from mhc_lm.train.ds_checkpoint import bf16_optimizer_fp32_state_dict, is_bf16_optimizer_checkpoint

SHAPES = [OrderedDict([("model.embed_tokens.weight", torch.Size([5, 3])), ("model.layers.0.w", torch.Size([2, 2]))]),
          OrderedDict([("model.norm.weight", torch.Size([3]))])]


def write_bf16_optimizer_checkpoint(ds_dir, world: int = 2, drop_rank: int | None = None) -> dict:
    ds_dir.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    want = {n: torch.randn(s, generator=g) for group in SHAPES for n, s in group.items()}
    flats, paddings = [], []
    for group in SHAPES:
        flat = torch.cat([want[n].reshape(-1) for n in group])
        pad = -flat.numel() % (2 * world)  # DeepSpeed aligns to nccl_start_alignment_factor x world
        flats.append(torch.cat([flat, torch.zeros(pad)]))
        paddings.append(pad)
    module = {n: t.to(torch.bfloat16) for n, t in want.items()}
    torch.save({"module": module, "param_shapes": SHAPES, "buffer_names": [], "frozen_param_fragments": None,
                "shared_params": {"lm_head.weight": "model.embed_tokens.weight"}}, ds_dir / "mp_rank_00_model_states.pt")
    for rank in range(world):
        if rank == drop_rank:
            continue
        parts = [f.chunk(world)[rank].clone() for f in flats]
        state = {"single_partition_of_fp32_groups": parts, "partition_count": [world] * len(SHAPES),
                 "group_paddings": [p if rank == world - 1 else 0 for p in paddings], "clip_grad": 1.0,
                 "base_optimizer_state": {}, "param_slice_mappings": [{}, {}]}
        torch.save({"optimizer_state_dict": state}, ds_dir / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    return want


def test_bf16_optimizer_layout_gives_every_fp32_master_back(tmp_path):
    want = write_bf16_optimizer_checkpoint(tmp_path / "pytorch_model", world=2)
    assert is_bf16_optimizer_checkpoint(tmp_path / "pytorch_model")
    got = bf16_optimizer_fp32_state_dict(tmp_path / "pytorch_model")
    assert set(got) == set(want) | {"lm_head.weight"}
    for name, value in want.items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], value), name
    assert torch.equal(got["lm_head.weight"], want["model.embed_tokens.weight"])  # the tied alias


def test_zero_stage_checkpoints_with_bf16_names_go_to_deepspeeds_reader(tmp_path):
    """ZeRO-2/3 + bf16 write `bf16_zero_pp_rank_*` files too (seen on CPU with ZeRO-3): reading them
    as BF16_Optimizer shards broke the ZeRO-3 + bf16 export."""
    ds_dir = tmp_path / "pytorch_model"
    ds_dir.mkdir()
    torch.save({"optimizer_state_dict": {"zero_stage": 3, "fp32_flat_groups": [torch.zeros(4)]}},
               ds_dir / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert not is_bf16_optimizer_checkpoint(ds_dir)
    assert not is_bf16_optimizer_checkpoint(tmp_path)  # no optimizer files at all


def test_a_missing_rank_is_named(tmp_path):
    write_bf16_optimizer_checkpoint(tmp_path / "pytorch_model", world=3, drop_rank=1)
    with pytest.raises(FileNotFoundError, match=r"ranks \[0, 2\]: some ranks' files are missing"):
        bf16_optimizer_fp32_state_dict(tmp_path / "pytorch_model")
