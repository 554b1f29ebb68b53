"""Top eigenpairs of symmetric (PSD) lineax operators, matrix-free.

The sNTK Θ = J Jᵀ is only available through `.mv`, and each matvec is an adjoint pass plus a tangent
pass. The eigensolver here therefore (i) applies Θ to blocks of vectors with `jax.vmap` (one batched
solve is far cheaper than `b` sequential ones), (ii) reuses every product it has paid for: residuals
and restarts are formed from stored products, never from fresh matvecs.

Helpers shared with `_trace_estimators.py` (flattening, operator checks) live here too.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._misc import RESULTS, error_if_not, gauge_fix, result_where

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


class _FlatOperator(NamedTuple):
    """A lineax operator seen as a map R^n -> R^n on flat vectors."""

    block_mv: Callable[[Array], Array]  # (n, b) -> (n, b): vectors as columns
    rows_mv: Callable[[Array], Array]  # (b, n) -> (b, n): vectors as rows
    unravel: Callable[[Array], Any]  # (n,) -> input pytree
    size: int
    dtype: jnp.dtype


def _check_operator(operator, name: str = "operator", *, psd: bool = False) -> None:
    """Static validation of an operator argument (raises at trace time)."""
    if not isinstance(operator, lx.AbstractLinearOperator):
        raise TypeError(
            f"`{name}` must be a lineax `AbstractLinearOperator`, got {type(operator).__name__}."
        )
    if operator.in_structure() != operator.out_structure():
        raise ValueError(
            f"`{name}` must be square with equal input and output structure, got "
            f"{operator.in_structure()} -> {operator.out_structure()}."
        )
    if not lx.is_symmetric(operator):
        raise ValueError(
            f"`{name}` must carry `lineax.symmetric_tag` (the spectral toolkit assumes a symmetric "
            "operator such as the sNTK); wrap it with `lineax.TaggedLinearOperator(op, "
            "lineax.symmetric_tag)` only if it really is symmetric."
        )
    if psd and not lx.is_positive_semidefinite(operator):
        raise ValueError(
            f"`{name}` must carry `lineax.positive_semidefinite_tag` for this estimator."
        )
    leaves = jtu.tree_leaves(operator.in_structure())
    if not all(jnp.issubdtype(s.dtype, jnp.floating) for s in leaves):
        raise TypeError(f"`{name}` must act on real floating-point vectors.")


def _flatten_operator(operator, name: str = "operator") -> _FlatOperator:
    """Flat block matvec with a traced check for non-finite output."""
    struct = operator.in_structure()
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), struct)
    flat0, unravel = jfu.ravel_pytree(zeros)

    def mv(x):
        return jfu.ravel_pytree(operator.mv(unravel(x)))[0].astype(flat0.dtype)

    def checked(Y):
        # One scalar test (a NaN or inf anywhere makes the sum non-finite): cheaper to compile
        # than an elementwise `all(isfinite)` over a large block.
        return eqx.error_if(
            Y,
            jnp.logical_not(jnp.isfinite(jnp.sum(Y))),
            f"`{name}.mv` returned non-finite values (NaN or inf); check the operator "
            "(for an sNTK: the ODE solve, its step-size controller and max_steps).",
        )

    def block_mv(X):
        return checked(jax.vmap(mv, in_axes=1, out_axes=1)(X))

    def rows_mv(X):
        if X.shape[0] == 1:
            # A vmap over one vector is not free: it batches every product of the matvec along
            # a unit axis, which slows the replay sNTK matvec down markedly.
            return checked(mv(X[0])[None])
        return checked(jax.vmap(mv)(X))

    return _FlatOperator(block_mv, rows_mv, unravel, int(flat0.size), flat0.dtype)


def _dense_matrix(flat: _FlatOperator) -> Array:
    """Materialise a flat operator column by column (costs `size` matvecs)."""
    M = flat.block_mv(jnp.eye(flat.size, dtype=flat.dtype))
    return 0.5 * (M + M.T)


# ----------------------------------------------------------------------------------------------
# Result type
# ----------------------------------------------------------------------------------------------


class Eigenpairs(eqx.Module):
    """Leading eigenpairs of a symmetric operator, with convergence diagnostics.

    Unpacks as two names, `values, vectors = top_eigenpairs(...)`, for the common case; the
    diagnostics are attributes.

    **Fields:**

    - `values`: the `k` largest eigenvalues, in descending order, shape `(k,)`.
    - `vectors`: the matching unit eigenvectors in the operator's input structure, each leaf with a
        leading axis of size `k` (so `jtu.tree_map(lambda v: v[i], vectors)` is the `i`-th vector).
    - `residuals`: relative residual norms ‖Θu − λu‖ / |λ| per pair, shape `(k,)` (the
        denominator is floored at `eps · λ_max`, and at the smallest normal number, so that zero
        eigenvalues and a zero operator give a finite number).
    - `converged`: boolean per pair, `residuals <= tol`. Not meeting the tolerance is reported here
        and in `result`, never raised.
    - `num_matvecs`: number of operator matvecs spent (a scalar integer array).
    - `num_restarts`: number of Krylov cycles that ran.
    - `result`: a `ds.RESULTS` item: `RESULTS.successful` when every pair converged, else
        `RESULTS.eigensolver_max_restarts` (the restart budget ran out first; on the dense path,
        which has no restarts, the pairs missed `tol` through rounding). `converged` says which.
    """

    values: Float[Array, " k"]
    vectors: PyTree[Float[Array, "k ..."]]
    residuals: Float[Array, " k"]
    converged: Bool[Array, " k"]
    num_matvecs: Int[Array, ""]
    num_restarts: Int[Array, ""]
    result: RESULTS

    def __iter__(self):
        # `vals, vecs = top_eigenpairs(...)`: the contract's two-name unpacking.
        return iter((self.values, self.vectors))


# ----------------------------------------------------------------------------------------------
# Thick-restart block Lanczos
# ----------------------------------------------------------------------------------------------
#
# Why not matfree's `eigh_partial(tridiag_sym(depth))`: it is a fixed-depth Lanczos without
# restarts, warm start or residuals, so reaching a residual tolerance means guessing the depth
# (its memory grows with the depth), and it cannot batch a block of matvecs under `vmap`. Below
# is a thick-restart block Lanczos (block size 1 allowed) with full reorthogonalisation,
# Rayleigh-Ritz on H = QᵀΘQ built explicitly from stored products, a Krylov residual estimate
# that stops a cycle as soon as the top `k` pairs have converged, exact residuals from stored
# products, and restarts that keep the best `r` Ritz vectors *and their images* (a restart costs
# no matvec).
#
# Layout: the basis is stored as rows, Q of shape (rows, n). Projections are then a matrix-vector
# product with a row-major matrix in both directions (Q x and cᵀQ), which XLA's CPU backend runs
# at memory bandwidth; with the column layout Q of shape (n, rows), Qᵀx for a single vector is
# a strided pass and much slower. At large n these passes over the basis are the cost of a
# cycle besides the matvecs, so each block is first projected against the few rows that carry
# its large components, then makes one pass over the whole basis, a second one only when that
# pass lost too much (the DGKS criterion); the summed coefficients are the new column of H.


def _project_out(Q, X):
    """X − (Q Xᵀ)ᵀ Q for row-stored Q (rows, n) and X (b, n): returns (coefficients (rows, b),
    projected X)."""
    C = jax.lax.dot_general(Q, X, (((1,), (1,)), ((), ())))
    return C, X - jax.lax.dot_general(C, Q, (((0,), (0,)), ((), ())))


def _orthonormalise_rows(Q, W, fill, scale, local=None):
    """Orthonormalise the rows of the block `W` (b, n) against the orthonormal (or zero) rows of
    `Q`. Returns (coefficients of W on Q, orthonormal block, norm discarded by breakdown repair).

    `local = (start, rows)` names rows `Q[start : start + rows]` that include all of W's large
    components (for W = Θ Q_j: the blocks Q_j and Q_{j-1}, and after a restart the kept Ritz
    vectors; the caller passes the `kept + b` rows that end with Q_j, a superset). They are
    projected out first, so the pass over the whole basis that follows removes only
    rounding-size components. Then classical Gram-Schmidt over the whole basis,
    with a second pass when some row lost more than 1 − 1/√2 of its norm in it
    (Daniel-Gragg-Kaufman-Stewart; "twice is enough"): without the local step almost every
    Lanczos block lost that much (its α and β components) and paid a second pass over the
    whole basis. Rows that (nearly) vanish — an invariant subspace was found, e.g. Θ has low
    rank — are replaced by the rows of `fill()` (fresh random directions) so that the basis
    keeps growing; the rare repair and re-passes sit behind `cond`s.
    """
    X = W
    C = jnp.zeros((Q.shape[0], W.shape[0]), W.dtype)
    if local is not None:
        start, rows = local
        C_local, X = _project_out(jax.lax.dynamic_slice_in_dim(Q, start, rows, axis=0), X)
        C = jax.lax.dynamic_update_slice_in_dim(C, C_local, start, axis=0)
    n0 = jnp.linalg.norm(X, axis=1)
    C_full, X = _project_out(Q, X)
    C = C + C_full
    n1 = jnp.linalg.norm(X, axis=1)
    # The classical threshold 1/√2. A looser one (0.1, to save passes that read the whole
    # basis) let the loss of orthogonality grow from block to block and
    # produced a spurious Ritz value 36x the largest eigenvalue in a restarted test run.
    C_again, X = jax.lax.cond(
        jnp.any(n1 < 0.7071 * n0),
        lambda X: _project_out(Q, X),
        lambda X: (jnp.zeros_like(C_full), X),
        X,
    )
    C = C + C_again
    norms = jnp.linalg.norm(X, axis=1)
    tiny = norms <= 1e3 * jnp.finfo(X.dtype).eps * scale

    def repair(X):
        X = jnp.where(tiny[:, None], fill(), X)
        return _project_out(Q, _project_out(Q, X)[1])[1]

    X = jax.lax.cond(jnp.any(tiny), repair, lambda X: X, X)
    dropped = jnp.sqrt(jnp.sum(jnp.where(tiny, norms**2, 0.0)))
    if X.shape[0] == 1:
        return C, X / jnp.linalg.norm(X), dropped
    Xt, R = jnp.linalg.qr(X.T)
    # A block whose rows are nearly dependent among themselves: QR amplifies their residual
    # components along Q by 1/|R_ii|, so project once more.
    d = jnp.abs(jnp.diag(R))
    Xt = jax.lax.cond(
        jnp.min(d) < 1e-2 * jnp.max(d),
        lambda X: jnp.linalg.qr(_project_out(Q, X.T)[1].T)[0],
        lambda X: X,
        Xt,
    )
    return C, Xt.T, dropped


def _fill(pool, i):
    # Random numbers are drawn once, and a cyclic shift of the pool serves as a fresh direction
    # for breakdown recovery (every random call site costs compile time on CPU). The shift is
    # never a multiple of n (a zero shift would return a direction already in the basis).
    n = pool.shape[1]
    return jnp.roll(pool, 1 + (7919 * (i + 1)) % max(n - 1, 1), axis=1)


def _residuals(theta, V, AV):
    """Relative residuals of row-stored Ritz pairs."""
    res = jnp.linalg.norm(AV - V * theta[:, None], axis=1)
    info = jnp.finfo(theta.dtype)
    floor = jnp.maximum(info.eps * jnp.max(jnp.abs(theta)), info.tiny)
    return res / jnp.maximum(jnp.abs(theta), floor)


def _masked_ritz(H, used, r):
    """Rayleigh-Ritz on the basis rows flagged `used` (others are zero padding): top-`r`
    values and coefficient vectors (zero on unused rows)."""
    both = used[:, None] & used[None, :]
    Hm = jnp.where(both, 0.5 * (H + H.T), 0.0)
    # Unused rows get an eigenvalue far below the spectrum, so they never rank in the top r.
    big = 1.0 + 2.0 * jnp.sum(jnp.abs(Hm))
    Hm = Hm - jnp.diag(jnp.where(used, 0.0, big))
    theta, Y = jnp.linalg.eigh(Hm)
    theta, Y = theta[::-1][:r], Y[:, ::-1][:, :r]
    return theta, jnp.where(used[:, None], Y, 0.0)


def _block_lanczos(rows_mv, n, dtype, k, r, b, q, tol, max_restarts, pool, X0):
    """Thick-restart block Lanczos on flat row vectors. Returns (theta, V, res, matvecs, cycles)
    with the Ritz vectors V as rows.

    A cycle's basis is [V; S; Q_1; ...]: the `r` Ritz vectors kept from the previous cycle (with
    their images), the start block S (b rows, orthogonal to V) and the blocks Q_{j+1} =
    orth(Θ Q_j). With full reorthogonalisation, Θ Q_{0..j} = Q_{0..j} H + Q_{j+1} C_j E_jᵀ where
    C_j = Q_{j+1} Θ Q_jᵀ, so a Ritz pair with coefficients y has residual ‖C_j y_j‖ (y_j: its
    part on the last block) at no matvec and no n-sized work; the cycle stops as soon as that
    estimate meets `tol` for the top `k`. The kept vectors' residuals lie along the next block
    (thick restart), which becomes the next cycle's start block S, so the relation holds across
    restarts.
    """
    kept = r
    size = kept + q * b  # rows of H
    col = jnp.arange(size)
    info = jnp.finfo(dtype)
    # At least three blocks per cycle, so that a warm start whose vectors are near eigenvectors
    # of overtaken eigenvalues still sees some Krylov space; in the first cycle (nothing kept)
    # also enough blocks for the top-r Ritz pairs to exist.
    first_min_blocks = min(q, max(3, -(-r // b) + 1))
    later_min_blocks = min(q, 3)
    if b == 1:
        S0 = X0 / jnp.linalg.norm(X0)
    else:
        S0 = jnp.linalg.qr(X0.T)[0].T

    def cycle(state):
        V, AV, theta_prev, have_V, S, _, _, matvecs, cycles = state
        base = cycles * q
        Q = jnp.zeros((size + b, n), dtype).at[:kept].set(V).at[kept : kept + b].set(S)
        W = jnp.zeros((size, n), dtype).at[:kept].set(AV)
        # VᵀΘV = diag(θ) for the kept Ritz vectors (up to rounding, with full reorthogonalisation).
        H = jnp.zeros((size, size), dtype).at[:kept, :kept].set(
            jnp.diag(jnp.where(have_V, theta_prev, 0.0))
        )
        kept_used = jnp.logical_and(have_V, col < kept)
        scale = jnp.where(have_V, jnp.max(jnp.abs(theta_prev)), 0.0)

        def used_rows(j):
            return jnp.logical_or(kept_used, (col >= kept) & (col < kept + (j + 1) * b))

        def grow(c):
            j, Q, W, H, scale, _, _, _ = c
            row0 = kept + j * b
            Qj = jax.lax.dynamic_slice_in_dim(Q, row0, b, axis=0)
            # The single call site keeps one compiled copy of the (expensive to compile) matvec.
            Wj = rows_mv(Qj)
            W = jax.lax.dynamic_update_slice_in_dim(W, Wj, row0, axis=0)
            scale = jnp.maximum(scale, jnp.max(jnp.linalg.norm(Wj, axis=1)))
            # Θ Q_j lies (in exact arithmetic) in the previous block, this block, the next one
            # and, right after a restart, the kept Ritz vectors; the `kept + b >= 2b` rows that
            # end with this block cover all but the next one.
            local = (j * b, kept + b)
            Cj, Qn, dropped = _orthonormalise_rows(
                Q, Wj, lambda: _fill(pool, base + j), scale, local
            )
            Hj = Cj[:size]  # (size, b): the new column block of H = QᵀΘQ
            H = jax.lax.dynamic_update_slice_in_dim(H, Hj, row0, axis=1)
            H = jax.lax.dynamic_update_slice_in_dim(H, Hj.T, row0, axis=0)
            Q = jax.lax.dynamic_update_slice_in_dim(Q, Qn, row0 + b, axis=0)
            theta, Y = _masked_ritz(H, used_rows(j), r)
            C = Qn @ Wj.T  # (b, b): the coupling of this block to the next one
            Yj = jax.lax.dynamic_slice_in_dim(Y, row0, b, axis=0)
            # Bound on the residual: the part along the next block, plus whatever a breakdown
            # repair discarded from this block.
            est = jnp.linalg.norm(C @ Yj, axis=0) + dropped * jnp.linalg.norm(Yj, axis=0)
            big_enough = jnp.maximum(
                jnp.abs(theta), jnp.maximum(info.eps * jnp.max(jnp.abs(theta)), info.tiny)
            )
            converged = jnp.logical_and(
                jnp.all(est[:k] / big_enough[:k] <= tol),
                j + 1 >= jnp.where(have_V, later_min_blocks, first_min_blocks),
            )
            return j + 1, Q, W, H, scale, theta, Y, converged

        def more(c):
            j, *_, converged = c
            return jnp.logical_and(j < q, jnp.logical_not(converged))

        init = (0, Q, W, H, scale, jnp.zeros((r,), dtype), jnp.zeros((size, r), dtype),
                jnp.array(False))
        blocks, Q, W, H, _, theta, Y, _ = jax.lax.while_loop(more, grow, init)
        # Y padded by the b rows of the next block (zero coefficients): slicing Q[:size] would
        # copy the whole basis.
        Y_pad = jnp.concatenate([Y, jnp.zeros((b, r), dtype)])
        V = jax.lax.dot_general(Y_pad, Q, (((0,), (0,)), ((), ())))  # (r, n)
        AV = jax.lax.dot_general(Y, W, (((0,), (0,)), ((), ())))
        res = _residuals(theta, V, AV)
        S = jax.lax.dynamic_slice_in_dim(Q, kept + blocks * b, b, axis=0)
        done = jnp.all(res[:k] <= tol)
        spent = matvecs + blocks * b
        return V, AV, theta, jnp.array(True), S, res, done, spent, cycles + 1

    def cond(state):
        *_, done, _, cycles = state
        return jnp.logical_and(jnp.logical_not(done), cycles < max_restarts)

    init = (
        jnp.zeros((r, n), dtype),
        jnp.zeros((r, n), dtype),
        jnp.zeros((r,), dtype),
        jnp.array(False),
        S0,
        jnp.full((r,), jnp.inf, dtype),
        jnp.array(False),
        jnp.array(0),
        jnp.array(0),
    )
    V, _, theta, _, _, res, _, matvecs, cycles = jax.lax.while_loop(cond, cycle, init)
    return theta[:k], V[:k], res[:k], matvecs, cycles


def _default_tol(dtype) -> float:
    return 1e-6 if jnp.finfo(dtype).bits >= 64 else 1e-3


def _fmix32(x):
    # MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 words.
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _start_pool(key, shape, dtype):
    """Uniform(−1, 1) numbers, a deterministic function of `key`, for the start block and the
    breakdown fill.

    Not `jax.random`: compiling threefry's sampler is a large part of this solver's compile
    time on CPU, and XLA's RngBitGenerator, which compiles fast, is batched under `vmap` by
    drawing every member of the batch from the first key. A counter hashed with the key's words
    is elementwise (so `vmap` over keys is exact), identical on every backend, compiles into one
    fusion, and is all a Krylov start vector needs.
    """
    data = jr.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = jnp.asarray(data).astype(jnp.uint32)
    if data.ndim != 1:
        raise ValueError(f"`key` must be a single PRNG key, got key data of shape {data.shape}.")
    seed = jnp.uint32(0x3C6EF372)
    for word in data:
        seed = _fmix32(seed ^ word) + jnp.uint32(0x9E3779B9)
    count = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _fmix32(_fmix32(count * jnp.uint32(0x9E3779B9) + seed) ^ (seed >> 7))
    return (bits >> 8).astype(dtype) * (2.0 / (1 << 24)) - 1.0


@eqx.filter_jit
def _top_eigenpairs_impl(operator, k, key, tol, r, block_size, krylov_blocks, max_restarts, init):
    flat = _flatten_operator(operator)
    n, dtype = flat.size, flat.dtype
    b = block_size
    q = krylov_blocks
    if n <= r + (q + 1) * b:
        # The basis would not fit in R^n (or a cycle would cost about n matvecs): the dense
        # matrix is cheaper and exact.
        M = _dense_matrix(flat)
        theta, Y = jnp.linalg.eigh(M)
        theta, V = theta[::-1][:k], Y[:, ::-1][:, :k].T
        res = _residuals(theta, V, V @ M)
        matvecs, cycles = jnp.array(n), jnp.array(0)
    else:
        pool = _start_pool(key, (2 * b, n), dtype)
        X0, pool = pool[:b], pool[b:]
        if init is not None:
            X_init = jax.vmap(lambda v: jfu.ravel_pytree(v)[0])(init).astype(dtype)
            # Each start row gets the sum of the warm-start vectors assigned to it (round robin),
            # plus a little of the random row so that no direction is excluded.
            assign = jax.nn.one_hot(jnp.arange(X_init.shape[0]) % b, b, dtype=dtype)
            tiny = jnp.finfo(dtype).tiny
            norms = jnp.maximum(jnp.linalg.norm(X_init, axis=1, keepdims=True), tiny)
            X_w = assign.T @ (X_init / norms)
            X_r = X0 / jnp.linalg.norm(X0, axis=1, keepdims=True)
            X0 = X_w + 1e-3 * X_r
        theta, V, res, matvecs, cycles = _block_lanczos(
            flat.rows_mv, n, dtype, k, r, b, q, tol, max_restarts, pool, X0
        )
    # Sign convention: the largest-magnitude entry of each eigenvector (a row) is positive.
    V = gauge_fix(V, axis=1)
    vectors = jax.vmap(flat.unravel)(V)
    converged = res <= tol
    result = result_where(
        ~jnp.all(converged), RESULTS.eigensolver_max_restarts, RESULTS.successful
    )
    return Eigenpairs(theta, vectors, res, converged, matvecs, cycles, result)


def top_eigenpairs(
    operator: lx.AbstractLinearOperator,
    k: int,
    *,
    key: PRNGKeyArray,
    tol: float | None = None,
    block_size: int | None = None,
    krylov_blocks: int | None = None,
    max_restarts: int = 50,
    init: PyTree[Float[Array, "b ..."]] | None = None,
) -> Eigenpairs:
    r"""The `k` largest eigenpairs of a symmetric (typically PSD) lineax operator, matrix-free.

    Thick-restart (block) Lanczos with full reorthogonalisation: each cycle grows the Krylov space
    $[S, ΘS, \dots, Θ^{q-1}S]$ one `block_size` matvec at a time (a block is one `jax.vmap`-ed
    matvec), solves the Rayleigh-Ritz problem after every block and stops the cycle as soon as
    the Krylov residual estimate says the top `k` pairs have converged; it then measures the
    exact residuals $\|Θu - λu\|/|λ|$ from stored products, and unless they meet `tol` restarts
    with the best `max(block_size, k + max(2, k // 2))` Ritz vectors kept (their images are
    already known, so a
    restart costs no matvec), up to `max_restarts` cycles. When the basis would not fit in the
    dimension, the dense matrix is formed and `eigh` is used instead.

    **Arguments:**

    - `operator`: a lineax operator with `lineax.symmetric_tag` and equal input/output
        structure, e.g. `ds.sntk_operator(model, problem)`.
    - `k`: number of eigenpairs, `1 <= k <= dimension`.
    - `key`: a JAX PRNG key for the random starting block.
    - `tol`: relative residual tolerance; default `1e-6` in float64, `1e-3` in float32.
    - `block_size`: vectors per matvec block; default 1. Single-vector Lanczos needs the fewest
        matvecs for separated eigenvalues (see `docs/benchmarks.md`);
        a block at least as large as the multiplicity of an eigenvalue is needed to find all of
        its eigenvectors (a single vector finds one per eigenspace), and blocks batch better.
    - `krylov_blocks`: maximum number of blocks per cycle (Krylov depth; a cycle stops early
        once converged). Default: a basis of about `max(16 block_size, 128)` vectors, capped so
        that the basis and its images stay within ~2 GB (float64) and at half the dimension.
        At least `max(block_size, k + max(2, k // 2)) + block_size` vectors (restarts keep the
        first term).
    - `max_restarts`: maximum number of cycles.
    - `init`: optional warm start, vectors in the operator's input structure with a leading axis
        (e.g. `previous.vectors` from a nearby operator).

    **Returns:**

    An [`Eigenpairs`][diffrax_sntk.Eigenpairs]: `values` (descending), `vectors` (input structure,
    leading axis `k`), `residuals`, `converged` flags, `num_matvecs` and `result`
    (`RESULTS.eigensolver_max_restarts` unless every pair converged). Unpacks as
    `values, vectors = top_eigenpairs(...)`. Non-convergence is reported, never raised; a
    non-finite matvec raises (an `eqx.error_if`, also under `jit`).
    """
    _check_operator(operator)
    n = operator.in_size()
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"`k` must be a Python int, got {type(k).__name__}.")
    if not 1 <= k <= n:
        raise ValueError(f"`k` must satisfy 1 <= k <= {n} (the operator's dimension), got k={k}.")
    dtype = jnp.result_type(*[s.dtype for s in jtu.tree_leaves(operator.in_structure())])
    if tol is None:
        tol = _default_tol(dtype)
    if jnp.shape(tol) != ():
        raise ValueError(f"`tol` must be a positive scalar, got shape {jnp.shape(tol)}.")
    # A number is checked here; an array (possibly traced) with `eqx.error_if` below.
    if isinstance(tol, (int, float)) and not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}.")
    b = 1 if block_size is None else block_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"`block_size` must be a positive int, got {block_size}.")
    b = min(b, n)
    # Ritz vectors kept at a restart: a few more than k, so that the k-th is not the worst kept.
    r = min(max(b, k + max(2, k // 2)), n)
    if krylov_blocks is None:
        # A deep basis: cycles stop early once converged, so depth costs no matvecs, and few
        # restarts converge in fewer matvecs. Capped so that the stored basis and its images
        # (2 × n × depth numbers) stay within ~2 GB in float64, and below the dimension.
        depth = min(max(16 * b, 128), max(4 * b, 125_000_000 // n), max(2 * b, n // 2))
        q = max(-(-r // b) + 2, depth // b)
    else:
        q = krylov_blocks
        if isinstance(q, bool) or not isinstance(q, int) or q < 2:
            raise ValueError(f"`krylov_blocks` must be an int >= 2, got {krylov_blocks}.")
        if q * b < r + b:
            raise ValueError(
                f"`krylov_blocks * block_size` must be at least {r + b} (the {r} Ritz vectors "
                f"kept at a restart, plus one block), got {q} * {b}."
            )
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 1:
        raise ValueError(f"`max_restarts` must be an int >= 1, got {max_restarts}.")
    if init is not None:
        try:
            jax.eval_shape(lambda v: jax.vmap(operator.mv)(v), init)
        except Exception as e:
            raise ValueError(
                "`init` must be vectors in the operator's input structure with a leading axis."
            ) from e
    tol_arr = error_if_not(jnp.asarray(tol, dtype), jnp.asarray(tol) > 0, "`tol` must be positive")
    restarts = jnp.asarray(max_restarts)
    return _top_eigenpairs_impl(operator, k, key, tol_arr, r, b, q, restarts, init)
