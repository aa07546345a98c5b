"""Fused pre-mix and post + residual merge vs their references (mHC and HC inputs)."""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

import mhc_lm.kernels.launch as launch  # noqa: E402
from mhc_lm.kernels import fused_post_res, fused_pre_mix  # noqa: E402

from .cases import check_post_res, check_pre_mix  # noqa: E402

SHAPES = [(37, 4, 48), (130, 3, 100), (5, 8, 33), (64, 4, 300), (1, 2, 1)]  # non-power-of-two C and N


@pytest.mark.parametrize("N, n, C", SHAPES)
def test_pre_mix_fp32(N, n, C):
    check_pre_mix("cpu", torch.float32, N, n, C, seed=N + C)


@pytest.mark.parametrize("N, n, C", SHAPES)
@pytest.mark.parametrize("hc", [False, True])
def test_post_res_fp32(N, n, C, hc):
    check_post_res("cpu", torch.float32, N, n, C, seed=N + C, hc=hc)


@pytest.mark.parametrize("N, n, C", [(37, 4, 48), (29, 3, 200)])
def test_bf16_loose(N, n, C):
    check_pre_mix("cpu", torch.bfloat16, N, n, C, seed=1)
    check_post_res("cpu", torch.bfloat16, N, n, C, seed=2)


def test_mixed_dtypes_and_expanded_hc_static_weights():
    check_post_res("cpu", torch.float32, 21, 4, 40, seed=4, f_dtype=torch.bfloat16)  # fp32 stream, bf16 F output
    check_pre_mix("cpu", torch.float32, 21, 4, 40, seed=5, expand_h=True)  # HC: A_m.expand(N, n), stride 0


def test_h_res_is_applied_not_bypassed():
    # the hyper-connections #8 pitfall: H_res x replaced by x. A permutation must permute streams.
    x, f = torch.randn(6, 3, 10), torch.zeros(6, 10)
    perm = torch.eye(3)[[1, 2, 0]].expand(6, 3, 3)  # [old i, new j] = 1 iff j = perm(i)
    out = fused_post_res(x, f, perm, torch.zeros(6, 3))
    torch.testing.assert_close(out, torch.einsum("tij,tic->tjc", perm, x), atol=0, rtol=0)
    assert not torch.equal(out, x)


def test_bad_shapes_and_devices():
    with pytest.raises(ValueError, match="h_res must be"):
        fused_post_res(torch.zeros(4, 3, 8), torch.zeros(4, 8), torch.zeros(4, 2, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="h_pre"):
        fused_pre_mix(torch.zeros(4, 3, 8), torch.zeros(4, 2))


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(launch, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_pre_mix(torch.zeros(4, 3, 8), torch.zeros(4, 3))


@pytest.mark.parametrize("splits", [1, 3])
def test_cuda_block_shapes_in_the_interpreter(monkeypatch, splits):
    # the CUDA policy's shapes (one token per program, channel blocks narrower than C, the backward
    # channel loop split over programs with partial dh sums) must give the reference results too
    import mhc_lm.kernels.stream_mix as sm

    monkeypatch.setattr(sm, "blocks", lambda T, C, n, dtype, device, backward: launch.Blocks(1, 16, 4, splits if backward else 1))
    check_pre_mix("cpu", torch.float32, 5, 3, 37, seed=11)  # 3 channel blocks, last one partial
    check_post_res("cpu", torch.float32, 5, 4, 37, seed=12, hc=True)
    check_post_res("cpu", torch.float32, 3, 8, 50, seed=13)


def test_cuda_block_policy(monkeypatch):
    monkeypatch.setattr(launch, "INTERPRETED", False)
    monkeypatch.setattr(launch, "sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    # 16-byte vectors per thread, the stream axis inside the thread, 4 warps at wide C
    assert launch.mix_blocks(16384, 2048, 4, torch.bfloat16, cuda, backward=False) == launch.Blocks(1, 1024, 4, 1)
    assert launch.mix_blocks(16384, 2048, 4, torch.float32, cuda, backward=True) == launch.Blocks(1, 512, 4, 1)
    # narrow C: fewer warps; few tokens: the backward channel loop is split (never beyond its chunks)
    assert launch.mix_blocks(8, 256, 4, torch.bfloat16, cuda, backward=False) == launch.Blocks(1, 256, 1, 1)
    assert launch.mix_blocks(4, 4096, 4, torch.bfloat16, cuda, backward=True) == launch.Blocks(1, 1024, 4, 4)
    assert launch.mix_blocks(600, 4096, 4, torch.float32, cuda, backward=True).splits == 2  # 8 * 132 / 600 -> 2
    # CPU tensors (interpreter) keep large blocks whatever the flag says
    assert launch.mix_blocks(1000, 300, 4, torch.float32, torch.device("cpu"), backward=True) == launch.Blocks(128, 256, 4, 1)
