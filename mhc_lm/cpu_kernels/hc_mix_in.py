"""HC's dynamic mix-in on CPU as numba loops: the forward in two passes over the stream around numpy's
tanh, the backward in one (the maths of `mhc_lm.model.stream_ops.hc_mix_in_reference`).

Per token t and stream i (K = n + 2 columns [W_m | W_r | W_b], P = x W; both passes get W
transposed, wt (K, C)):

    r_i = rsqrt(mean_c x_i^2 + eps);  d_i = tanh(r_i P_i)
    A_m[i] = a_m[i] + s_a d_i[0];  A_r[i, j] = a_r[i, j] + s_a d_i[1 + j];  B[i] = b[i] + s_b d_i[n + 1]
    h = sum_i A_m[i] x_i

Backward, for g = dL/dh, G_r = dL/dA_r, G_b = dL/dB:

    dA_m[i] = <x_i, g>;  dd_i = s_a [dA_m[i], G_r[i, :]], s_b G_b[i];  dz = dd (1 - d^2)
    dP_i = r_i dz;  dr_i = sum_k dz_k P_ik
    dx_i = A_m[i] g - (dr_i r_i^3 / C) x_i + W dP_i   (+ dx_in_i, added last: see below)

P = x W is made in the forward's first pass, three columns per sweep over the row (`projection_row`),
and saved for the backward: MKL ran the (N n, C) x (C, K = 6) matmul in 0.62 ms on an AMD EPYC
(0.21 in its other orientation), while in the pass, where the row is in L1 for the norm anyway, it
adds 0.01 ms (C = 256, 1024 tokens, 2 threads). The first pass ends with z = r P; numpy's SIMD tanh
makes d from it in place (libm's scalar tanhf, six calls per token and stream, was 0.30 of the
0.51 ms one-pass forward on an Intel Xeon at 2 threads, 0.6 of 1.2 ms at one), and the second pass
makes the coefficients and the pre-mix. The backward adds W dP_i into dx_i three columns per
sweep too, the first sweep with the other two terms (C = 256: the kernel 0.39 -> 0.26 ms with the
stream in cache, against one sweep per column). dW = (dP^T x)^T stays a BLAS matmul outside
(`hc_ops.py`): in the loop it needs partial sums per fixed token chunk, which measured within the
noise of BLAS (docs/performance.md, "CPU kernels"). `dx_in`
is the gradient that the stream's other consumer (post + residual) sent, added as the last
operation with plain IEEE rounding (`stream_mix.add_into`, no fast-math): the same bits as autograd
summing the two contributions. Every token is independent, so nothing depends on the thread count.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .stream_mix import REDUCE, add_into, pre_mix_token


@nb.njit(cache=True, inline="always")
def projection_row(x, t, i, wt, p):
    """p[t, i, k] = <x[t, i], wt[k]> for every k: three columns per sweep over the row, so one load of
    x serves three products (one column per sweep: the forward 0.37 against 0.32 ms)."""
    C, K = x.shape[2], wt.shape[0]
    zero = x.dtype.type(0)
    k = 0
    while k + 3 <= K:
        a0 = zero
        a1 = zero
        a2 = zero
        for c in range(C):
            v = x[t, i, c]
            a0 += v * wt[k, c]
            a1 += v * wt[k + 1, c]
            a2 += v * wt[k + 2, c]
        p[t, i, k] = a0
        p[t, i, k + 1] = a1
        p[t, i, k + 2] = a2
        k += 3
    while k < K:
        a0 = zero
        for c in range(C):
            a0 += x[t, i, c] * wt[k, c]
        p[t, i, k] = a0
        k += 1


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def hc_projection_forward(x, wt, eps, r, p, z):
    """The forward's first pass: r, P = x W and z = r P, the tanh's argument (the caller applies
    numpy's vectorised tanh to z in place: `hc_ops.py`)."""
    N, n, C = x.shape
    K = wt.shape[0]
    zero, one, width = x.dtype.type(0), x.dtype.type(1), x.dtype.type(C)
    for t in nb.prange(N):
        for i in range(n):
            ss = zero
            for c in range(C):
                ss += x[t, i, c] * x[t, i, c]
            projection_row(x, t, i, wt, p)
            ri = one / np.sqrt(ss / width + eps)
            r[t, i] = ri
            for k in range(K):
                z[t, i, k] = p[t, i, k] * ri


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def hc_mix_in_forward(x, d, alpha_m, alpha_r, beta, sa, sb, out, a_m, a_r, b):
    """The second pass, from d = tanh(z): the coefficients and the pre-mix."""
    N, n = x.shape[0], x.shape[1]
    for t in nb.prange(N):
        for i in range(n):
            a_m[t, i] = alpha_m[i] + sa * d[t, i, 0]
            for j in range(n):
                a_r[t, i, j] = alpha_r[i, j] + sa * d[t, i, 1 + j]
            b[t, i] = beta[i] + sb * d[t, i, n + 1]
        pre_mix_token(x, a_m, t, out)


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def hc_mix_in_backward(x, p, wt, a_m, r, d, sa, sb, g, g_ar, g_b, dx_in, add_dx_in, dx, dp, dh_pre, dsa, dsb):
    N, n, C = x.shape
    K = p.shape[2]
    zero, one, width = x.dtype.type(0), x.dtype.type(1), x.dtype.type(C)
    for t in nb.prange(N):
        acc_a = zero
        acc_b = zero
        for i in range(n):
            dh = zero
            for c in range(C):
                dh += x[t, i, c] * g[t, c]
            dh_pre[t, i] = dh
            acc_a += dh * d[t, i, 0]
            for j in range(n):
                acc_a += g_ar[t, i, j] * d[t, i, 1 + j]
            acc_b += g_b[t, i] * d[t, i, n + 1]
            ri = r[t, i]
            dr = zero
            for k in range(K):
                if k == 0:
                    dd = sa * dh
                elif k <= n:
                    dd = sa * g_ar[t, i, k - 1]
                else:
                    dd = sb * g_b[t, i]
                dz = dd * (one - d[t, i, k] * d[t, i, k])
                dp[t, i, k] = dz * ri
                dr += dz * p[t, i, k]
            scale = -dr * ri * ri * ri / width
            h = a_m[t, i]
            q0, q1, q2 = dp[t, i, 0], dp[t, i, 1], dp[t, i, 2]  # K = n + 2 >= 3
            for c in range(C):
                dx[t, i, c] = h * g[t, c] + scale * x[t, i, c] + q0 * wt[0, c] + q1 * wt[1, c] + q2 * wt[2, c]
            k = 3
            while k + 3 <= K:
                q0, q1, q2 = dp[t, i, k], dp[t, i, k + 1], dp[t, i, k + 2]
                for c in range(C):
                    dx[t, i, c] += q0 * wt[k, c] + q1 * wt[k + 1, c] + q2 * wt[k + 2, c]
                k += 3
            while k < K:
                q0 = dp[t, i, k]
                for c in range(C):
                    dx[t, i, c] += q0 * wt[k, c]
                k += 1
            if add_dx_in:
                add_into(dx[t, i], dx_in[t, i])
        dsa[t] = acc_a
        dsb[t] = acc_b
