"""mHC's mix-in on CPU as numba loops, around the BLAS projection and the Sinkhorn kernel: the maths
of `mhc_lm.model.stream_ops.mhc_mix_in_reference` (sinkhorn map, K = 2n + n^2 logits).

Per token t, with the flat stream v = x_t (n C values), P = v phi from one BLAS matmul (N, K) and
gates a = [a_pre x n | a_post x n | a_res x n^2]:

    r = rsqrt(mean v^2 + eps);  z = a r P + b
    H_pre = sigmoid(z[:n]);  H_post = 2 sigmoid(z[n:2n]);  logits[i, j] = z[2n + i n + j]
    layer input = sum_i H_pre[i] x_i

`coefficients_forward` does all of that in one pass over the token's row (its n C values stay in
L1 between the norm and the pre-mix) and writes the logits tokens last, the Sinkhorn kernel's
layout. Backward, for g = dL/d(layer input), G_post = dL/dH_post, G_L = dL/dlogits (the Sinkhorn
kernel's backward):

    dz[:n] = <x_i, g> s (1 - s),  s = H_pre;   dz[n:2n] = G_post 2 s (1 - s),  s = H_post / 2;   dz[2n:] = G_L
    dP = a r dz;  dr = sum_k a_k dz_k P_k;  da_group += dz_k r P_k;  db = dz
    dx = dP phi^T (BLAS) + H_pre[i] g - (dr r^3 / (n C)) x   (+ dx_in, added last)

`coefficients_backward` is the per-token part (one pass: the <x_i, g> products), `stream_backward`
the last pass, into the BLAS product's buffer. `dx_in` is the gradient of the stream's other
consumer (post + residual), added as the last operation with IEEE rounding (`stream_mix.add_into`):
the same bits as autograd's sum of the two. Every token is independent: nothing depends on the
thread count.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .stream_mix import REDUCE, add_into, pre_mix_token


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def coefficients_forward(x, p, gate, bias, eps, out, h_pre, h_post, logits, r):
    N, n, C = x.shape
    zero, one, two, width = x.dtype.type(0), x.dtype.type(1), x.dtype.type(2), x.dtype.type(n * C)
    for t in nb.prange(N):
        ss = zero
        for i in range(n):
            for c in range(C):
                ss += x[t, i, c] * x[t, i, c]
        rt = one / np.sqrt(ss / width + eps)
        r[t] = rt
        for k in range(n):
            h_pre[t, k] = one / (one + np.exp(-(gate[k] * rt * p[t, k] + bias[k])))
            h_post[t, k] = two / (one + np.exp(-(gate[n + k] * rt * p[t, n + k] + bias[n + k])))
        for k in range(n * n):
            logits[k // n, k % n, t] = gate[2 * n + k] * rt * p[t, 2 * n + k] + bias[2 * n + k]
        pre_mix_token(x, h_pre, t, out)


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def coefficients_backward(x, p, gate, r, h_pre, h_post, g, g_post, g_logits, dz, dp, dgate, scale):
    """dz (N, K): dL/dz per token (db, summed by torch); dp (N, K) = dL/dP; dgate (N, 3) per token;
    scale (N,) = -dr r^3 / (n C)."""
    N, n, C = x.shape
    K = p.shape[1]
    zero, one, two, width = x.dtype.type(0), x.dtype.type(1), x.dtype.type(2), x.dtype.type(n * C)
    for t in nb.prange(N):
        for i in range(n):
            acc = zero
            for c in range(C):
                acc += x[t, i, c] * g[t, c]
            s = h_pre[t, i]
            dz[t, i] = acc * s * (one - s)
            s = h_post[t, i] / two
            dz[t, n + i] = g_post[t, i] * two * s * (one - s)
        for k in range(n * n):
            dz[t, 2 * n + k] = g_logits[k // n, k % n, t]
        rt = r[t]
        dr = zero
        d_pre = zero
        d_post = zero
        d_res = zero
        for k in range(K):
            rp = rt * p[t, k]
            if k < n:
                d_pre += dz[t, k] * rp
            elif k < 2 * n:
                d_post += dz[t, k] * rp
            else:
                d_res += dz[t, k] * rp
            dproj = dz[t, k] * gate[k]
            dp[t, k] = dproj * rt
            dr += dproj * p[t, k]
        dgate[t, 0] = d_pre
        dgate[t, 1] = d_post
        dgate[t, 2] = d_res
        scale[t] = -dr * rt * rt * rt / width


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def stream_backward(x, g, h_pre, scale, dx_in, add_dx_in, dx):
    """dx (N, n, C) holds dP phi^T on entry; adds H_pre[i] g and the norm's term, then dx_in."""
    N, n, C = x.shape
    for t in nb.prange(N):
        s = scale[t]
        for i in range(n):
            h = h_pre[t, i]
            for c in range(C):
                dx[t, i, c] += h * g[t, c] + s * x[t, i, c]
            if add_dx_in:
                add_into(dx[t, i], dx_in[t, i])
