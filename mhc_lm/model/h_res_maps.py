"""H_res maps of mHC: how K per-token logits become the n x n residual mixing matrix.

    v phi_res (N, K) ──► a_res * (.) + b_res ──► logits (N, K) ──► map ──► H_res (N, n, n)

Only this map differs between the mHC variants (docs/manifolds.md); v, H_pre, H_post, the
gates and the orientation stay. Orientation, as everywhere in mHC: H[t, i, j] is the weight
of *old* stream i in *new* stream j, new_j = sum_i H[i, j] x_i.

    map              K          H_res                                  manifold
    sinkhorn         n^2        Sinkhorn-Knopp(exp(logits))            doubly stochastic (DS), to Sinkhorn tolerance
    permutation      n!         sum_k softmax(logits)_k P_k            DS exactly (Birkhoff-von Neumann)
    kronecker        log2 n     (x)_m [[p_m, 1-p_m], [1-p_m, p_m]]     DS exactly
    orthostochastic  n(n-1)/2   Q * Q (entrywise), Q = Cayley(S)       DS exactly
    orthogonal       n(n-1)/2   Q = Cayley(S)                          orthogonal, entries may be < 0

Init (`init_bias(n, init)`, init = mhc_init):
    map              "uniform" bias -> H at S / dynamic part 0        "identity" bias -> H
    sinkhorn         0 -> J/n                                         6I - 3 -> I in a limit only (diag 1/(1+(n-1)e^-6))
    permutation      0 -> J/n exactly                                 log(n!-1) + 3 on the identity -> weight sigmoid(3) on I
    kronecker        0 -> J/n exactly                                 logit(sigmoid(3)^(1/log2 n)) each -> diag sigmoid(3)
    orthostochastic  0 -> I exactly (H = I + O(S^2))                  same as uniform: I exactly
    orthogonal       0 -> I exactly, only if S = 0 exactly            same as uniform: I exactly
The four DS maps keep identical streams identical for *any* logits, so they are Pre-Norm at
init with the usual small gates. The orthogonal map is Pre-Norm at init only with S = 0
exactly: `zero_projection_init` says the module must start phi's H_res columns at zero (the
gate then keeps its usual value and phi_res gets a gradient a_res v^T dL/dS from step one).

Every map computes in float32 (float64 if given) with autocast off, whatever the input dtype.
Adding a map: subclass `HResMap`, implement `num_outputs` and `matrix` (and `identity_bias`, and
`validate` when the map is not defined for every n), and add an instance to `H_RES_MAPS`: the
config reads the valid names from that registry and calls `validate(n_streams)`.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

from .fused_ops import sinkhorn
from .sinkhorn import DEFAULT_SINKHORN_ITERS

IDENTITY_WEIGHT_LOGIT = 3.0
"""Identity-biased inits put weight sigmoid(3) ~ 0.953 on the identity: no softmax/sigmoid saturated."""


class HResMap:
    """One way to turn per-token logits (N, K) into H_res (N, n, n) [old i, new j]."""

    name: str = ""
    doubly_stochastic: bool = True  # H >= 0, rows and columns sum to 1: Amax of any product <= 1
    iterative: bool = False  # DS only to an iteration's tolerance (sinkhorn), else exact up to rounding
    zero_projection_init: bool = False  # Pre-Norm at init needs the dynamic part exactly 0 (phi_res = 0)
    fused_coefficients: bool = False  # K = n^2 logits read as n x n: the fused coefficient kernel's layout

    def validate(self, n: int) -> None:
        """Raise ValueError when the map is not defined for n streams."""
        if n < 1:
            raise ValueError(f"h_res_map={self.name!r} needs n_streams >= 1, got {n}")

    def num_outputs(self, n: int) -> int:
        """K, the width of the dynamic projection (phi_res columns, b_res entries) for n streams."""
        raise NotImplementedError

    def identity_bias(self, n: int) -> torch.Tensor:
        """(K,) bias putting H close to (or exactly at) the identity."""
        raise NotImplementedError

    def init_bias(self, n: int, init: str = "uniform") -> torch.Tensor:
        """(K,) fp32 bias b_res for mhc_init = "uniform" (all zeros) or "identity"."""
        self.validate(n)
        if init == "uniform":
            return torch.zeros(self.num_outputs(n))
        if init == "identity":
            return self.identity_bias(n).float()
        raise ValueError(f"init must be 'uniform' or 'identity', got {init!r}")

    def matrix(self, logits: torch.Tensor, n: int, **opts) -> torch.Tensor:
        """logits (N, K) fp32/fp64 -> H (N, n, n); autocast is already off."""
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor, n: int, *, sinkhorn_iters: int = DEFAULT_SINKHORN_ITERS,
                 fused: bool = False, cpu_kernels: bool = False) -> torch.Tensor:
        """H_res (N, n, n) [old i, new j] from logits (N, K), in fp32 (fp64 if given) whatever autocast."""
        self.validate(n)
        K = self.num_outputs(n)
        if logits.dim() != 2 or logits.shape[-1] != K:
            raise ValueError(f"h_res_map={self.name!r} at n={n} takes logits (N, {K}), got {tuple(logits.shape)}")
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.matrix(logits.to(dtype), n, sinkhorn_iters=sinkhorn_iters, fused=fused, cpu_kernels=cpu_kernels)


# ------------------------------------------------------------------ sinkhorn (mHC, arXiv 2512.24880)
class SinkhornMap(HResMap):
    """Sinkhorn-Knopp on exp(logits), logits read row-major as [old i, new j]; DS to tolerance."""

    name, iterative, fused_coefficients = "sinkhorn", True, True

    def num_outputs(self, n: int) -> int:
        return n * n

    def identity_bias(self, n: int) -> torch.Tensor:
        return (6.0 * torch.eye(n) - 3.0).flatten()  # (n^2,), as ManifoldHyperConnection's "identity"

    def matrix(self, logits, n, *, sinkhorn_iters=DEFAULT_SINKHORN_ITERS, fused=False, cpu_kernels=False, **_):
        return sinkhorn(logits.reshape(-1, n, n), sinkhorn_iters, fused=fused, cpu_kernels=cpu_kernels)  # (N, n, n)


# ------------------------------------------------------------------ permutation (mHC-lite, arXiv 2601.05732)
@functools.lru_cache(maxsize=None)
def permutation_matrices(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n!, n, n) one-hot P_k[i, perm_k[i]] = 1 (old i -> new perm_k[i]), lexicographic order; cached."""
    perms = torch.tensor(list(itertools.permutations(range(n))), device=device)  # (n!, n)
    return torch.nn.functional.one_hot(perms, n).to(dtype)  # (n!, n, n)


class PermutationMap(HResMap):
    """H = sum_k a_k P_k, a = softmax(logits) over the n! permutations: exactly DS (convex hull)."""

    name = "permutation"
    max_streams = 6
    """n! permutation matrices: 720 at n = 6, 5040 at n = 7."""

    def validate(self, n: int) -> None:
        super().validate(n)
        if n > self.max_streams:
            raise ValueError(f"h_res_map='permutation' mixes n! permutation matrices; n_streams={n} gives "
                             f"{math.factorial(n)} (the limit is n_streams <= {self.max_streams}); "
                             "use 'kronecker' or 'orthostochastic' for more streams")

    def num_outputs(self, n: int) -> int:
        return math.factorial(n)

    def identity_bias(self, n: int) -> torch.Tensor:
        bias = torch.zeros(math.factorial(n))
        if n > 1:  # identity is permutation 0 (lexicographic); odds e^3 against all others together
            bias[0] = math.log(math.factorial(n) - 1) + IDENTITY_WEIGHT_LOGIT
        return bias

    def matrix(self, logits, n, **_):
        weights = torch.softmax(logits, dim=-1)  # (N, n!)
        perms = permutation_matrices(n, logits.device, logits.dtype)  # (n!, n, n)
        return torch.einsum("tk,kij->tij", weights, perms)  # (N, n, n)


# ------------------------------------------------------------------ kronecker (KromHC, arXiv 2601.21579)
class KroneckerMap(HResMap):
    """H = A_1 (x) ... (x) A_k, A_m = [[p_m, 1-p_m], [1-p_m, p_m]], p = sigmoid: exactly DS, symmetric.

    Stream index i = (b_1 ... b_k) in binary, b_1 most significant; factor A_m mixes bit b_m."""

    name = "kronecker"

    def validate(self, n: int) -> None:
        if n < 2 or n & (n - 1):
            raise ValueError(f"h_res_map='kronecker' needs n_streams a power of 2 (2, 4, 8, 16, ...), got {n}")

    def num_outputs(self, n: int) -> int:
        return n.bit_length() - 1  # log2 n

    def identity_bias(self, n: int) -> torch.Tensor:
        k = self.num_outputs(n)
        p = torch.sigmoid(torch.tensor(IDENTITY_WEIGHT_LOGIT, dtype=torch.float64)) ** (1.0 / k)  # p^k = sigmoid(3)
        return torch.logit(p).float().expand(k).clone()

    def matrix(self, logits, n, **_):
        p, q = torch.sigmoid(logits), torch.sigmoid(-logits)  # (N, k), p + q = 1; sigmoid(-x) keeps small q accurate
        factors = torch.stack([torch.stack([p, q], -1), torch.stack([q, p], -1)], -2)  # (N, k, 2, 2)
        h = factors[:, 0]  # (N, 2, 2)
        for m in range(1, factors.shape[1]):
            a = h.shape[-1]
            h = torch.einsum("tij,tkl->tikjl", h, factors[:, m]).reshape(-1, 2 * a, 2 * a)  # (N, 2a, 2a) = h (x) A_m
        return h


# ------------------------------------------------------------------ Cayley maps (go-mHC arXiv 2604.02309; JPmHC 2602.18308)
def cayley(logits: torch.Tensor, n: int) -> torch.Tensor:
    """logits (N, n(n-1)/2) -> orthogonal Q = (I - S)(I + S)^-1 (N, n, n), det Q = +1.

    S is skew-symmetric with S[r, c] = logits[:, m] = -S[c, r] for the m-th (r < c) in row-major
    order. I + S is always invertible (eigenvalues 1 + i lambda) and commutes with I - S, so
    Q = solve(I + S, I - S). The solve runs in float64: cond(I + S) = sqrt(1 + rho(S)^2) reaches
    ~1e4 at logits ~1e3, where an fp32 solve would lose orthogonality (and DS of Q * Q) to ~1e-4;
    at n <= 16 the n^3 solve costs nothing next to the projection."""
    rows, cols = torch.triu_indices(n, n, 1, device=logits.device)  # (K,), (K,)
    upper = logits.new_zeros(logits.shape[0], n, n, dtype=torch.float64)  # (N, n, n)
    upper[:, rows, cols] = logits.double()  # strictly upper triangle, row-major
    s = upper - upper.transpose(-1, -2)  # (N, n, n), skew-symmetric
    eye = torch.eye(n, dtype=torch.float64, device=logits.device)
    return torch.linalg.solve(eye + s, eye - s).to(logits.dtype)  # (N, n, n)


class OrthostochasticMap(HResMap):
    """H = Q * Q entrywise, Q = Cayley(S): rows/columns of Q are unit vectors, so H is exactly DS.
    S = 0 gives H = I exactly, but H = I + O(S^2) there (dH/dS = 0 at S = 0 itself): keep the
    small random dynamic part of the usual init, do not zero phi_res for this map."""

    name = "orthostochastic"

    def num_outputs(self, n: int) -> int:
        return n * (n - 1) // 2

    def identity_bias(self, n: int) -> torch.Tensor:
        return torch.zeros(self.num_outputs(n))  # S = 0 -> Q = I -> H = I exactly

    def matrix(self, logits, n, **_):
        q = cayley(logits, n)  # (N, n, n)
        return q * q


class OrthogonalMap(HResMap):
    """H = Q = Cayley(S): spectral norm exactly 1, entries may be negative, column sums not 1.
    Identical streams stay identical only if Q^T 1 = 1, e.g. S = 0: zero phi_res at init."""

    name, doubly_stochastic, zero_projection_init = "orthogonal", False, True

    def num_outputs(self, n: int) -> int:
        return n * (n - 1) // 2

    def identity_bias(self, n: int) -> torch.Tensor:
        return torch.zeros(self.num_outputs(n))  # S = 0 -> Q = I exactly

    def matrix(self, logits, n, **_):
        return cayley(logits, n)


H_RES_MAPS: dict[str, HResMap] = {m.name: m for m in (SinkhornMap(), PermutationMap(), KroneckerMap(),
                                                      OrthostochasticMap(), OrthogonalMap())}
"""Registry, name -> map; the keys are the valid `h_res_map` values."""


def get_h_res_map(name: str) -> HResMap:
    """The map called `name`, with a clear error listing the valid names."""
    if name not in H_RES_MAPS:
        raise ValueError(f"h_res_map must be one of {list(H_RES_MAPS)}, got {name!r}")
    return H_RES_MAPS[name]
