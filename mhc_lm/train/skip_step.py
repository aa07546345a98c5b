"""`train.on_spike: skip` without a host sync: the spike rule on device tensors, and an AdamW whose
update is dropped by a device-side flag.

The decision never leaves the device. `DeviceSpikeDetector` keeps the previous `window` values in
a fp64 ring buffer on the loss's device and evaluates SpikeDetector's rule there
(`mhc_lm/metrics/spikes.py`: x > mean + k * std of the previous values, armed once `min_history`
values exist, flat histories never spike, non-finite values are spikes once armed and stay out of
the history). Its 0-dim bool result goes straight into `SkipStepAdamW.skip`, and the optimizer
selects, element by element, between the updated and the current parameters and moments with
`torch.where`: nothing is read back to the host to decide, so a CUDA stream keeps going (the
trainer reads the step's loss afterwards, for its log, as it always did).

A skipped step leaves the parameters and both Adam moments exactly as they were, even when the
gradient holds NaN/Inf (`torch.where` selects, it does not multiply). Two things still advance, as
for any step: the LR schedule and Adam's step counter (its bias correction; a host-side count, as in
torch's own AdamW, so reading it costs no device sync). When no step is skipped the update is the
one of torch.optim.AdamW's single-tensor path (bitwise on CPU; the fused CUDA kernel rounds
differently). Extra memory: a few temporaries of the largest parameter's size during the step.
"""

from __future__ import annotations

import math

import torch

from mhc_lm.metrics.spikes import FLAT_STD


class DeviceSpikeDetector:
    """SpikeDetector's rule over the previous `window` values, on `device`, without host syncs."""

    def __init__(self, window: int, sigma: float, min_history: int, device):
        self.window, self.sigma, self.min_history = window, float(sigma), min_history
        self.device = torch.device(device)
        self.buf = torch.zeros(window, dtype=torch.float64, device=self.device)
        self.size = torch.zeros((), dtype=torch.int64, device=self.device)  # values held (<= window)
        self.head = torch.zeros((), dtype=torch.int64, device=self.device)  # slot of the next value
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)  # spikes so far
        self.evaluated = torch.zeros((), dtype=torch.int64, device=self.device)
        self._slots = torch.arange(window, device=self.device)

    def update(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one value (a 0-dim tensor); returns (is_spike: bool tensor, threshold: fp64 tensor,
        nan while the rule is not armed). Both stay on the device."""
        v = value.detach().reshape(()).to(device=self.device, dtype=torch.float64)
        finite = torch.isfinite(v)
        armed = self.size >= self.min_history
        held = self._slots < self.size
        n = self.size.clamp_min(1).to(torch.float64)
        mean = torch.where(held, self.buf, 0.0).sum() / n
        std = (torch.where(held, self.buf - mean, 0.0).pow(2).sum() / n).sqrt()
        threshold = mean + self.sigma * std
        spike = armed & (~finite | ((std >= FLAT_STD) & (v > threshold)))
        self.count += spike.to(torch.int64)
        self.evaluated += armed.to(torch.int64)
        write = finite & (self._slots == self.head)
        self.buf = torch.where(write, v, self.buf)
        self.head = torch.where(finite, (self.head + 1) % self.window, self.head)
        self.size = torch.where(finite, (self.size + 1).clamp_max(self.window), self.size)
        return spike, torch.where(armed, threshold, torch.full_like(threshold, math.nan))

    def state_dict(self) -> dict:
        """SpikeDetector's format (history oldest first); reads the device once (checkpoint time only)."""
        size, head = int(self.size), int(self.head)
        values = self.buf.tolist()
        history = values[:size] if size < self.window else values[head:] + values[:head]
        return {"history": history, "count": int(self.count), "evaluated": int(self.evaluated), "excess": 0.0}

    def load_state_dict(self, state: dict) -> None:
        history = [float(v) for v in state["history"]][-self.window:]
        buf = torch.zeros(self.window, dtype=torch.float64)
        buf[:len(history)] = torch.tensor(history, dtype=torch.float64)
        self.buf = buf.to(self.device)
        self.size.fill_(len(history))
        self.head.fill_(len(history) % self.window)
        self.count.fill_(int(state.get("count", 0)))
        self.evaluated.fill_(int(state.get("evaluated", 0)))


class SkipStepAdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose next `step()` is dropped where `self.skip` (a 0-dim bool tensor on the
    parameters' device) is true; `skip` is consumed by each step (None = a plain AdamW step).
    Same hyperparameters and state layout as AdamW (checkpoints load into either)."""

    def __init__(self, params, **kwargs):
        kwargs["foreach"], kwargs["fused"] = False, False
        super().__init__(params, **kwargs)
        self.skip: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        skip, self.skip = self.skip, None
        if skip is None:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("SkipStepAdamW supports neither amsgrad nor maximize")
            beta1, beta2 = group["betas"]
            lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:  # as AdamW's _init_group (non-capturable: the step count lives on the CPU)
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_t += 1
                step = step_t.item()  # a CPU tensor: no device sync
                # the single-tensor AdamW update, out of place (same kernels, same rounding)
                new_p = p.mul(1 - lr * wd) if wd != 0 else p.clone()
                new_m = exp_avg.lerp(grad, 1 - beta1)
                new_v = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** step
                bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
                denom = (new_v.sqrt() / bias_correction2_sqrt).add_(eps)
                new_p.addcdiv_(new_m, denom, value=-(lr / bias_correction1))
                p.copy_(torch.where(skip, p, new_p))
                exp_avg.copy_(torch.where(skip, exp_avg, new_m))
                exp_avg_sq.copy_(torch.where(skip, exp_avg_sq, new_v))
        return loss
