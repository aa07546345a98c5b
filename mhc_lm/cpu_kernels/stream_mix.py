"""Pre-mix and post + residual on CPU as numba loops, one pass over the stream each.

The maths of `mhc_lm.model.stream_ops` (shapes: N tokens, n streams, width C; H[t, i, j] is
old stream i -> new stream j):

    pre_mix           out[t, c]    = sum_i h[t, i] x[t, i, c]
    pre_mix backward  dx[t, i, c]  = h[t, i] g[t, c];          dh[t, i] = sum_c x[t, i, c] g[t, c]
    post_res          out[t, j, c] = sum_i H[t, i, j] x[t, i, c] + hp[t, j] f[t, c]
    post_res backward dx[t, i, c]  = sum_j H[t, i, j] g[t, j, c];  df[t, c] = sum_j hp[t, j] g[t, j, c]
                      dH[t, i, j]  = sum_c x[t, i, c] g[t, j, c];  dhp[t, j] = sum_c g[t, j, c] f[t, c]

One token per loop iteration (its n x C values stay in L1 between the products), the loop over C
innermost. Sums over C may be reassociated (`REDUCE`: reassoc + contract, no assumption about
NaN or inf, so a non-finite value still propagates); each token's result depends on nothing but
that token, so it is the same whatever the thread count. Constants are made in the arrays' dtype
(`x.dtype.type(0)`): numba types a Python literal as int64 or float64, so `x[0] * 0` or `1 - s` on
float32 values is float64, and a float32 sum started that way ran in float64 at half the vector
width (the kernels here took 1.3-2x as long).
"""

from __future__ import annotations

import numba as nb

REDUCE = {"reassoc", "contract"}


@nb.njit(cache=True, inline="always")
def pre_mix_token(x, h, t, out):
    """out[t, :] = sum_i h[t, i] x[t, i, :] (the pre-mix of one token; the mix-in kernels end with it)."""
    n, C = x.shape[1], x.shape[2]
    for c in range(C):
        out[t, c] = h[t, 0] * x[t, 0, c]
    for i in range(1, n):
        hi = h[t, i]
        for c in range(C):
            out[t, c] += hi * x[t, i, c]


@nb.njit(cache=True)
def add_into(dst, src):
    """dst += src elementwise with IEEE rounding (no fast-math: nothing reassociates it with what made
    dst), so adding a second consumer's gradient last gives the bits of autograd's sum."""
    for c in range(dst.shape[0]):
        dst[c] = dst[c] + src[c]


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def pre_mix_forward(x, h, out):
    for t in nb.prange(x.shape[0]):
        pre_mix_token(x, h, t, out)


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def pre_mix_backward(x, h, g, dx, dh):
    N, n, C = x.shape
    zero = x.dtype.type(0)
    for t in nb.prange(N):
        for i in range(n):
            hi = h[t, i]
            acc = zero
            for c in range(C):
                dx[t, i, c] = hi * g[t, c]
                acc += x[t, i, c] * g[t, c]
            dh[t, i] = acc


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def post_res_forward(x, f, H, hp, out):
    N, n, C = x.shape
    for t in nb.prange(N):
        for j in range(n):
            a = hp[t, j]
            for c in range(C):
                out[t, j, c] = a * f[t, c]
            for i in range(n):
                hij = H[t, i, j]
                for c in range(C):
                    out[t, j, c] += hij * x[t, i, c]


@nb.njit(parallel=True, cache=True, fastmath=REDUCE)
def post_res_backward(x, f, H, hp, g, dx, df, dH, dhp):
    N, n, C = x.shape
    zero = x.dtype.type(0)
    for t in nb.prange(N):
        for i in range(n):
            for c in range(C):
                dx[t, i, c] = H[t, i, 0] * g[t, 0, c]
            for j in range(1, n):
                hij = H[t, i, j]
                for c in range(C):
                    dx[t, i, c] += hij * g[t, j, c]
        for c in range(C):
            df[t, c] = hp[t, 0] * g[t, 0, c]
        for j in range(1, n):
            a = hp[t, j]
            for c in range(C):
                df[t, c] += a * g[t, j, c]
        for j in range(n):
            acc = zero
            for c in range(C):
                acc += g[t, j, c] * f[t, c]
            dhp[t, j] = acc
            for i in range(n):
                acc = zero
                for c in range(C):
                    acc += x[t, i, c] * g[t, j, c]
                dH[t, i, j] = acc
