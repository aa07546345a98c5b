"""Upcycling: a standard (pre-norm) model becomes an n-stream hc / mhc model computing the same
function at conversion, so continued pretraining starts from the source's loss.

Why it is exact (docs/continued_pretraining.md has the derivation): the streams start as n copies
of the embedding and the collapse before the final norm is their mean, so it suffices that every
sub-layer (i) feeds F exactly the residual x, and (ii) maps n copies of x to n copies of x + F(x).

  hc   A_m = e_(k mod n) (one-hot: h = x), A_r = I, B = 1, dynamic W = 0: the paper's own init.
  mhc  phi = 0, so the coefficients are sigmoids of the biases alone (no token dependence);
       H_pre = sigmoid(b_pre) with weight w on the home stream k mod n and (1 - w)/(n - 1) on the
       others: it sums to 1, so h = x;  H_post = 2 sigmoid(0) = 1, so every stream gets + F(x);
       H_res = the map of b_res (uniform or near-identity), column-stochastic, so copies stay copies.
  grid grid_size 1 is the sequential stack itself; larger grids average two paths at every merge
       node and have no exact counterpart (refused).

Trainable from there: the mixing parameters get non-zero gradients at step 0 (hc: A_m, A_r, B and
W through the 0.01 scales; mhc: phi through the gates a = mhc_gate_init, and the biases), except
the ones multiplied by a zero (hc's scales and norm weight, mhc's gates), which move from the
second step on. The home-stream H_pre breaks the permutation symmetry between streams: with a
symmetric H_pre (w = 1/n) every stream would receive the same gradient forever and stay a copy.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch

from mhc_lm.convert.output import build_model, check_target, write_folder
from mhc_lm.train.model_folder import ConversionError, resolve_folder
from mhc_lm.train.model_source import load_source

UPCYCLE_MODES = ("hc", "mhc", "grid")


def _target_config(source_config, residual_mode: str, n_streams: int, h_res_map: str | None,
                   mhc_init: str | None, grid_size: int | None):
    from mhc_lm.model import MhcLmConfig

    src_mode = source_config.residual_mode
    if not (src_mode == "standard" or (src_mode == "grid" and source_config.grid_size == 1)):
        raise ConversionError(f"the source has residual_mode={src_mode!r}: only standard models are upcycled")
    if source_config.block_norm != "pre":
        raise ConversionError(f"the source has block_norm={source_config.block_norm!r}: hc and mhc are defined "
                              "around pre-norm sub-layers, so only pre-norm models are upcycled")
    if residual_mode not in UPCYCLE_MODES:
        raise ConversionError(f"--residual-mode {residual_mode!r}: choose one of {list(UPCYCLE_MODES)}")
    if residual_mode == "grid" and (grid_size or 1) != 1:
        raise ConversionError(f"--grid-size {grid_size}: a grid larger than 1 averages two block paths at every "
                              "merge node, and no exact mapping from the sequential source is known; only grid_size 1 "
                              "(the same stack) is exact")
    if residual_mode != "mhc" and h_res_map is not None:
        raise ConversionError(f"--h-res-map applies to --residual-mode mhc only (got {residual_mode})")
    if residual_mode == "mhc" and n_streams < 2:
        raise ConversionError(f"--n-streams {n_streams}: mhc needs at least 2 streams for an exact upcycle (H_pre "
                              "is a sigmoid, so one stream cannot carry weight exactly 1)")
    if n_streams < 1:
        raise ConversionError(f"--n-streams {n_streams}: must be >= 1")
    params = set(inspect.signature(MhcLmConfig.__init__).parameters) - {"self", "kwargs"}
    kwargs = {k: v for k, v in source_config.to_dict().items() if k in params}
    kwargs.update(residual_mode=residual_mode, n_streams=n_streams, grid_size=1,
                  mixing_recompute="none", mixing_recompute_layers=None)
    kwargs["h_res_map"] = h_res_map or "sinkhorn"
    if mhc_init is not None:
        kwargs["mhc_init"] = mhc_init
    try:
        return MhcLmConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConversionError(f"upcycled config: {err}") from err


def exact_mixing_state(module, residual_mode: str, pre_home_weight: float) -> dict[str, torch.Tensor]:
    """Values of one hc / mhc connection's parameters that make it pass n copies of x to n copies of x + F(x)."""
    if residual_mode == "hc":
        return module.reset_static()  # Pre-Norm equivalent by construction (Zhu et al., section 3.3)
    n = module.n_streams
    if not 0.0 < pre_home_weight < 1.0:
        raise ConversionError(f"--pre-home-weight {pre_home_weight}: must be in (0, 1)")
    logit = lambda p: math.log(p) - math.log1p(-p)  # noqa: E731  (inverse sigmoid)
    b_pre = torch.full((n,), logit((1.0 - pre_home_weight) / (n - 1)), dtype=torch.float64)
    b_pre[module.sublayer_idx % n] = logit(pre_home_weight)  # H_pre sums to 1: the layer input is x
    bias = module.init_bias().double()
    bias[:n] = b_pre
    bias[n:2 * n] = 0.0  # H_post = 2 sigmoid(0) = 1 on every stream
    return {"phi": torch.zeros(module.phi.shape), "alpha": torch.full((3,), float(module.gate_init)),
            "bias": bias.float()}


def upcycled_model(source, residual_mode: str, n_streams: int, h_res_map: str | None = None,
                   mhc_init: str | None = None, grid_size: int | None = None, pre_home_weight: float = 0.5):
    """MhcLmForCausalLM in `residual_mode` sharing the source's weights, mixing set by `exact_mixing_state`."""
    from mhc_lm.model import MhcLmForCausalLM

    config = _target_config(source.config, residual_mode, n_streams, h_res_map, mhc_init, grid_size)
    with torch.device("meta"):
        model = MhcLmForCausalLM(config)
    weights = dict(source.state_dict)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    result = model.load_state_dict(weights, strict=False, assign=True)
    mixing = model.model.mixing_modules()
    mixing_names = {f"{name}." for name, m in model.named_modules() if m in mixing}
    missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in mixing_names)
               and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise ConversionError(f"source weights do not match its config (missing {missing[:4]}, unexpected "
                              f"{list(result.unexpected_keys)[:4]})")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    with torch.no_grad():
        for module in mixing:
            module.to_empty(device="cpu")  # fp32, as the model keeps the coefficient path
            state = exact_mixing_state(module, residual_mode, pre_home_weight)
            unset = sorted(set(dict(module.named_parameters())) - set(state))
            if unset:  # to_empty left them uninitialised: a model change the upcycle does not know
                raise RuntimeError(f"upcycle: no exact value for the {residual_mode} parameters {unset}")
            for name, value in state.items():
                getattr(module, name).copy_(value)
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        if p.is_meta:
            raise ConversionError(f"upcycled model: {name} was not given a value")
    return model.eval()


def max_logit_gap(a, b, vocab_size: int, seq_len: int = 16) -> tuple[float, float]:
    """(max |logits_a - logits_b|, max |logits_a|) on a fixed random batch of 2 x seq_len tokens."""
    ids = torch.randint(0, vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = a(ids, use_cache=False).logits.float(), b(ids, use_cache=False).logits.float()
    return float((la - lb).abs().max()), float(la.abs().max())


def upcycle(src: str | Path, out: str | Path, residual_mode: str, n_streams: int, h_res_map: str | None = None,
            mhc_init: str | None = None, grid_size: int | None = None, pre_home_weight: float = 0.5,
            check: bool = True) -> Path:
    """Write `out`: the upcycled model of `src` (run dir, mhc-lm or Llama folder) with its tokenizer.

    `check`: compare the logits of source and result on a fixed batch first (RuntimeError if they
    differ by more than float rounding: that would be a bug, not a user error)."""
    folder = resolve_folder(src)
    out_dir = check_target(out, folder)
    source = load_source(folder)
    model = upcycled_model(source, residual_mode, n_streams, h_res_map, mhc_init, grid_size, pre_home_weight)
    if check:
        reference = build_model(source.config, source.state_dict, str(src))
        gap, scale = max_logit_gap(reference, model, source.config.vocab_size,
                                   min(16, source.config.max_position_embeddings))
        tol = (1e-4 if model.model.embed_tokens.weight.dtype == torch.float32 else 3e-2) * max(1.0, scale)
        if not gap <= tol:
            raise RuntimeError(f"upcycled logits differ from the source's by {gap:.3g} (tolerance {tol:.3g})")
    extra = (folder / "generation_config.json",) if source.kind != "run" else ()
    return write_folder(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True),
                        source.tokenizer_dir, extra)
