"""Mixing recompute under torch.compile of each decoder layer (how the trainer compiles): the
gradients equal eager `none`. The recomputing node's backward calls torch.autograd.grad, which
dynamo does not trace: it runs eagerly at a graph break (aot_eager here, inductor on GPU)."""

import pytest
import torch

from tests.model.test_mixing_recompute import _model, _step


@pytest.mark.slow
@pytest.mark.parametrize("recompute", ["sublayer", "block"])
def test_compiled_layers_equal_eager_none(recompute):
    torch._dynamo.reset()
    loss_ref, grads_ref = _step(_model("mhc"))
    model = _model("mhc", recompute)
    for layer in model.model.layers:
        layer.compile(backend="aot_eager")
    for _ in range(2):  # the second step runs the cached graphs
        model.zero_grad(set_to_none=True)
        loss, grads = _step(model)
        torch.testing.assert_close(loss, loss_ref, atol=0, rtol=0)
        for name, g in grads_ref.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
