"""torch.library registrations (schema, fake, autograd), torch.compile, model integration, CUDA."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

import mhc_lm.kernels as kernels  # noqa: E402
from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM  # noqa: E402
from mhc_lm.model import fused_ops, h_res_maps, residual_hc, residual_mhc, stream_connection  # noqa: E402
from mhc_lm.model.sinkhorn import sinkhorn_reference  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _post_res_args():
    g = torch.Generator().manual_seed(0)
    N, n, C = 12, 4, 20
    return (torch.randn(N, n, C, generator=g), torch.randn(N, C, generator=g), torch.rand(N, n, n, generator=g), torch.rand(N, n, generator=g))


@pytest.mark.parametrize("op", ["post_res", "pre_mix", "sinkhorn", "mhc_coefficients"])
def test_opcheck(op):
    g = torch.Generator().manual_seed(1)
    args = {
        "post_res": _post_res_args(),
        "pre_mix": (torch.randn(12, 3, 20, generator=g), torch.rand(12, 3, generator=g)),
        "sinkhorn": (torch.randn(12, 4, 4, generator=g), 5, 1e-6),
        "mhc_coefficients": (torch.randn(20, 32, generator=g), 0.1 * torch.randn(32, 24, generator=g), torch.rand(3, generator=g), torch.randn(24, generator=g), 4, 1e-6),
    }[op]
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    result = torch.library.opcheck(getattr(torch.ops.mhc_lm, op).default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("op", ["post_res", "pre_mix", "sinkhorn"])
def test_opcheck_non_contiguous_inputs(op):
    """The fakes promise the (contiguous) layout the real ops return, also for permuted inputs."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 3, 12, generator=g).permute(2, 1, 0)  # (12, 3, 20), not contiguous
    args = {
        "post_res": (x, torch.randn(20, 12, generator=g).t(), torch.rand(12, 3, 3, generator=g).transpose(1, 2),
                     torch.rand(3, 12, generator=g).t()),
        "pre_mix": (x, torch.rand(3, 12, generator=g).t()),
        "sinkhorn": (torch.randn(4, 4, 12, generator=g).permute(2, 0, 1), 5, 1e-6),
    }[op]
    assert not args[0].is_contiguous()
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    result = torch.library.opcheck(getattr(torch.ops.mhc_lm, op).default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_dispatch_table_names_every_kernel_and_falls_back_beyond_its_limit():
    cuda = torch.device("cuda")  # nothing is allocated: the choice is made from the arguments
    assert set(fused_ops.FUSED_OPS) == {"mhc_coefficients", "hc_mix_in", "mhc_mix_in", "pre_mix", "post_res",
                                        "post_res_backward", "sinkhorn"}
    for name, op in fused_ops.FUSED_OPS.items():
        assert fused_ops.fused_kernel(name) is (None if op.kernel is None else getattr(kernels, op.kernel))
        assert fused_ops.dispatch(name, True, cuda, op.max_streams + 1) is op.reference
        assert fused_ops.dispatch(name, True, torch.device("cpu"), 2) is op.reference
        assert fused_ops.dispatch(name, False, cuda, 2) is op.reference
    assert fused_ops.FUSED_OPS["sinkhorn"].max_streams == 16 and fused_ops.FUSED_OPS["post_res"].max_streams == 8
    logits = torch.randn(3, 17, 17)
    torch.testing.assert_close(fused_ops.sinkhorn(logits, 5, fused=True), sinkhorn_reference(logits, 5))


def test_kernels_are_a_leaf():
    """mhc_lm.kernels imports nothing of mhc_lm (the model imports the kernels, guarded)."""
    import ast

    for path in sorted((REPO / "mhc_lm" / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n == "mhc_lm" or n.startswith("mhc_lm.") for n in names), (path.name, names)
            assert not (isinstance(node, ast.ImportFrom) and node.level > 1), path.name


def test_torch_compile_fullgraph_matches_eager():
    def step(x, f, hr, hp, logits):
        h = kernels.fused_sinkhorn(logits, 4, 1e-6)
        return (kernels.fused_post_res(x, f, hr * h, hp) ** 2).sum()

    args = [a.requires_grad_() for a in _post_res_args()] + [torch.randn(12, 4, 4, requires_grad=True)]
    eager = torch.autograd.grad(step(*args), args)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)  # no graph break around the kernels
    got = torch.autograd.grad(compiled(*args), args)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _kernels_on_cpu(monkeypatch) -> list:
    """Route the model's dispatch to the kernels on CPU (it picks them only on CUDA); returns the call log."""
    calls = []

    def dispatch(name, fused, device, n_streams=None, **_):
        op = fused_ops.FUSED_OPS[name]
        if fused and op.kernel is not None:
            calls.append(name)
            return getattr(kernels, op.kernel)
        return op.reference

    def sinkhorn(logits, iters=20, eps=1e-6, fused=False, **_):
        if fused:
            calls.append("sinkhorn")
            return kernels.fused_sinkhorn(logits, iters, eps)
        return sinkhorn_reference(logits, iters, eps)

    for module in (residual_mhc, residual_hc, stream_connection):  # mix-in in the modes, post + residual shared
        monkeypatch.setattr(module, "dispatch", dispatch)
    monkeypatch.setattr(h_res_maps, "sinkhorn", sinkhorn)  # mHC calls Sinkhorn through its H_res map
    return calls


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_model_with_fused_kernels_matches_reference(monkeypatch, mode):
    calls = _kernels_on_cpu(monkeypatch)
    kw = dict(vocab_size=61, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=32, residual_mode=mode, n_streams=4, sinkhorn_iters=6,
              mhc_init="identity", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    ref = MhcLmForCausalLM(MhcLmConfig(**kw, fused_kernels=False))
    with torch.no_grad():  # move off the init so every mixing path carries signal
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fused = MhcLmForCausalLM(MhcLmConfig(**kw, fused_kernels=True))
    fused.load_state_dict(ref.state_dict())  # same state-dict layout either way
    ids = torch.randint(3, 61, (2, 11))
    out_r, out_f = ref(ids, labels=ids), fused(ids, labels=ids)
    want = {"pre_mix", "post_res", "post_res_backward"} | ({"mhc_coefficients", "sinkhorn"} if mode == "mhc" else set())
    assert set(calls) == want, calls
    out_r.loss.backward()
    out_f.loss.backward()
    torch.testing.assert_close(out_f.logits, out_r.logits, atol=2e-5, rtol=2e-5)
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.gpu
def test_all_kernels_on_cuda():
    """Every case at GPU shapes (1B: C = 2048, n = 4) with compiled kernels, in a process without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(REPO / "tests/kernels/cases.py"), "cuda"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]



def test_without_triton_import_fails_and_dispatch_falls_back():
    code = (
        "import sys, torch; sys.modules['triton'] = None\n"
        "try:\n    import mhc_lm.kernels\nexcept ImportError as e:\n    assert 'needs Triton' in str(e), e\n"
        "else:\n    raise SystemExit('imported without triton')\n"
        "from mhc_lm.model import fused_ops, stream_ops\n"
        "assert fused_ops.dispatch('post_res', True, torch.device('cuda')) is stream_ops.post_res_reference\n"
        "assert fused_ops.fused_kernel('sinkhorn') is None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
