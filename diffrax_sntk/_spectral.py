"""Top eigenpairs of symmetric (PSD) lineax operators, matrix-free.

The sNTK Θ = J Jᵀ is only available through `.mv`, and each matvec is an adjoint pass plus a tangent
pass. The eigensolver here therefore (i) applies Θ to blocks of vectors with `jax.vmap` (one batched
solve is far cheaper than `b` sequential ones), (ii) reuses every product it has paid for: residuals
and restarts are formed from stored products, never from fresh matvecs.

Helpers shared with `_trace_estimators.py` (flattening, operator checks) live here too.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


class _FlatOperator(NamedTuple):
    """A lineax operator seen as a map R^n -> R^n on flat vectors."""

    block_mv: object  # (n, b) -> (n, b)
    unravel: object  # (n,) -> input pytree
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

    def block_mv(X):
        Y = jax.vmap(mv, in_axes=1, out_axes=1)(X)
        return eqx.error_if(
            Y,
            jnp.logical_not(jnp.all(jnp.isfinite(Y))),
            f"`{name}.mv` returned non-finite values (NaN or inf); check the operator (for an sNTK: "
            "the ODE solve, its step-size controller and max_steps).",
        )

    return _FlatOperator(block_mv, unravel, int(flat0.size), flat0.dtype)


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
    - `residuals`: relative residual norms ‖Θu − λu‖ / |λ| per pair, shape `(k,)` (the denominator is
        floored at `eps · λ_max` so that zero eigenvalues give a finite number).
    - `converged`: boolean per pair, `residuals <= tol`. Not meeting the tolerance is reported here,
        never raised.
    - `num_matvecs`: number of operator matvecs spent (a scalar integer array).
    - `num_restarts`: number of Krylov cycles that ran.
    """

    values: Float[Array, " k"]
    vectors: PyTree[Float[Array, "k ..."]]
    residuals: Float[Array, " k"]
    converged: Bool[Array, " k"]
    num_matvecs: Int[Array, ""]
    num_restarts: Int[Array, ""]

    def __iter__(self):
        # `vals, vecs = top_eigenpairs(...)`: the contract's two-name unpacking.
        return iter((self.values, self.vectors))


# ----------------------------------------------------------------------------------------------
# Thick-restart block Lanczos
# ----------------------------------------------------------------------------------------------
#
# Why not matfree's `eigh_partial(tridiag_sym(depth))`: it is single-vector Lanczos with a fixed
# depth, no restarts, no warm start and no residuals, so reaching a residual tolerance means
# guessing the depth, and its matvecs are strictly sequential (no `vmap` over a block). Below is a
# block Lanczos with full reorthogonalisation (block classical Gram-Schmidt, applied twice), explicit
# Rayleigh-Ritz on the whole basis, exact residuals from stored products, and thick restarts that
# keep the best `b` Ritz vectors *and their images under Θ* (a restart costs no matvec).


def _orthonormalise(Q, X, fill, scale):
    """Orthonormalise the block `X` against the (zero-padded) orthonormal columns of `Q`.

    Columns that vanish after projection (an invariant subspace was found, e.g. Θ has low rank)
    are replaced by the matching columns of `fill` (fresh pseudo-random directions), so the basis
    stays orthonormal and keeps growing. Each projection costs a pass over the whole basis (the
    dominant cost of a cycle at large n), so the rare breakdown repair sits behind a `cond`.
    """
    for _ in range(2):  # "twice is enough" (Kahan / Parlett)
        X = X - Q @ (Q.T @ X)
    norms = jnp.linalg.norm(X, axis=0)
    tiny = norms <= 1e3 * jnp.finfo(X.dtype).eps * scale

    def repair(X):
        X = jnp.where(tiny[None, :], fill, X)
        for _ in range(2):
            X = X - Q @ (Q.T @ X)
        return X

    X = jax.lax.cond(jnp.any(tiny), repair, lambda X: X, X)
    X, _ = jnp.linalg.qr(X)
    # A second pass fixes the loss of orthogonality when X was nearly in span(Q).
    X = X - Q @ (Q.T @ X)
    X, _ = jnp.linalg.qr(X)
    # The discarded (tiny) remainder: the part of the block no longer spanned by the basis.
    dropped = jnp.sqrt(jnp.sum(jnp.where(tiny, norms**2, 0.0)))
    return X, dropped


def _fill(pool, i):
    # Random numbers are drawn once: threefry costs seconds of compile time per call site on CPU,
    # and a cyclic shift of a Gaussian pool is as good a fresh direction for breakdown recovery.
    return jnp.roll(pool, 7919 * (i + 1), axis=0)


def _residuals(theta, V, AV):
    res = jnp.linalg.norm(AV - V * theta[None, :], axis=0)
    floor = jnp.finfo(theta.dtype).eps * jnp.maximum(jnp.max(jnp.abs(theta)), jnp.finfo(theta.dtype).tiny)
    return res / jnp.maximum(jnp.abs(theta), floor)


def _masked_ritz(H, used, b):
    """Rayleigh-Ritz on the basis columns flagged `used` (others are zero padding): top-`b`
    values and coefficient vectors (zero on unused columns)."""
    both = used[:, None] & used[None, :]
    Hm = jnp.where(both, 0.5 * (H + H.T), 0.0)
    # Unused columns get an eigenvalue far below the spectrum, so they never rank in the top b.
    big = 1.0 + 2.0 * jnp.sum(jnp.abs(Hm))
    Hm = Hm - jnp.diag(jnp.where(used, 0.0, big))
    theta, Y = jnp.linalg.eigh(Hm)
    theta, Y = theta[::-1][:b], Y[:, ::-1][:, :b]
    return theta, jnp.where(used[:, None], Y, 0.0)


def _block_lanczos(block_mv, n, dtype, k, b, q, tol, max_restarts, pool, X0):
    """Thick-restart block Lanczos on flat vectors. Returns (theta, V, res, matvecs, cycles).

    Each cycle grows the basis one block at a time and stops early once the top-`k` Ritz pairs
    are converged by the Krylov residual estimate: with full reorthogonalisation,
    Θ Q_{0..j} = Q_{0..j} H + Q_{j+1} C_j E_jᵀ with C_j = Q_{j+1}ᵀ Θ Q_j, so the residual of a
    Ritz pair with coefficients y is ‖C_j y_j‖ (y_j: its last block), at no matvec and no
    n-sized work. The exact residuals are then formed from the stored products.
    """
    m = q * b
    min_blocks = min(q, 3)
    U0, _ = jnp.linalg.qr(X0)
    col = jnp.arange(m)
    floor = jnp.finfo(dtype).eps

    def cycle(state):
        U, AU, have_AU, _, _, _, matvecs, cycles = state
        base = cycles * q
        Q = jnp.zeros((n, m + b), dtype).at[:, :b].set(U)
        W = jnp.zeros((n, m), dtype)
        H = jnp.zeros((m, m), dtype)
        scale = jnp.max(jnp.linalg.norm(AU, axis=0))

        def grow(c):
            j, Q, W, H, _ = c
            Qj = jax.lax.dynamic_slice_in_dim(Q, j * b, b, axis=1)
            # Thick restart: ΘU of the first block is already known, so it costs no matvec. The
            # single call site keeps one compiled copy of the (expensive to compile) matvec.
            Wj = jax.lax.cond(
                jnp.logical_and(j == 0, have_AU), lambda: AU, lambda: block_mv(Qj)
            )
            W = jax.lax.dynamic_update_slice_in_dim(W, Wj, j * b, axis=1)
            Hj = Q[:, :m].T @ Wj  # (m, b): the new column block of H = QᵀΘQ
            H = jax.lax.dynamic_update_slice_in_dim(H, Hj, j * b, axis=1)
            H = jax.lax.dynamic_update_slice_in_dim(H, Hj.T, j * b, axis=0)
            s = jnp.maximum(jnp.max(jnp.linalg.norm(Wj, axis=0)), scale)
            Qn, dropped = _orthonormalise(Q, Wj, _fill(pool, base + j), s)
            Q = jax.lax.dynamic_update_slice_in_dim(Q, Qn, (j + 1) * b, axis=1)
            theta, Y = _masked_ritz(H, col < (j + 1) * b, b)
            C = Qn.T @ Wj
            Yj = jax.lax.dynamic_slice_in_dim(Y, j * b, b, axis=0)
            # Bound on the residual: the part along the next block, plus whatever a breakdown
            # repair discarded from this block.
            est = jnp.linalg.norm(C @ Yj, axis=0) + dropped * jnp.linalg.norm(Yj, axis=0)
            big_enough = jnp.maximum(jnp.abs(theta), floor * jnp.max(jnp.abs(theta)))
            # At least `min_blocks` blocks per cycle, so that a warm start whose vectors are
            # near eigenvectors of overtaken eigenvalues still sees some Krylov space.
            converged = jnp.logical_and(
                jnp.all(est[:k] / big_enough[:k] <= tol), j + 1 >= min_blocks
            )
            return j + 1, Q, W, H, converged

        def more(c):
            j, *_, converged = c
            return jnp.logical_and(j < q, jnp.logical_not(converged))

        blocks, Q, W, H, _ = jax.lax.while_loop(more, grow, (0, Q, W, H, jnp.array(False)))
        theta, Y = _masked_ritz(H, col < blocks * b, b)
        V, AV = Q[:, :m] @ Y, W @ Y
        res = _residuals(theta, V, AV)
        spent = jnp.where(have_AU, blocks - 1, blocks) * b
        done = jnp.all(res[:k] <= tol)
        return V, AV, jnp.array(True), theta, res, done, matvecs + spent, cycles + 1

    def cond(state):
        *_, done, _, cycles = state
        return jnp.logical_and(jnp.logical_not(done), cycles < max_restarts)

    init = (
        U0,
        jnp.zeros((n, b), dtype),
        jnp.array(False),
        jnp.zeros((b,), dtype),
        jnp.full((b,), jnp.inf, dtype),
        jnp.array(False),
        jnp.array(0),
        jnp.array(0),
    )
    V, _, _, theta, res, _, matvecs, cycles = jax.lax.while_loop(cond, cycle, init)
    return theta[:k], V[:, :k], res[:k], matvecs, cycles


def _default_tol(dtype) -> float:
    return 1e-6 if jnp.finfo(dtype).bits >= 64 else 1e-3


@eqx.filter_jit
def _top_eigenpairs_impl(operator, k, key, tol, block_size, krylov_blocks, max_restarts, init):
    flat = _flatten_operator(operator)
    n, dtype = flat.size, flat.dtype
    b = block_size
    q = krylov_blocks
    if n <= (max(q, 2) + 1) * b:
        # The basis would not fit in R^n (or a cycle would cost about n matvecs): the dense
        # matrix is cheaper and exact.
        M = _dense_matrix(flat)
        theta, Y = jnp.linalg.eigh(M)
        theta, V = theta[::-1][:k], Y[:, ::-1][:, :k]
        res = _residuals(theta, V, M @ V)
        matvecs, cycles = jnp.array(n), jnp.array(0)
    else:
        pool = jr.normal(key, (n, 2 * b), dtype)
        X0, pool = pool[:, :b], pool[:, b:]
        if init is not None:
            X_init = jax.vmap(lambda v: jfu.ravel_pytree(v)[0], out_axes=1)(init).astype(dtype)
            X0 = X0.at[:, : X_init.shape[1]].set(X_init[:, :b])
        theta, V, res, matvecs, cycles = _block_lanczos(
            flat.block_mv, n, dtype, k, b, q, tol, max_restarts, pool, X0
        )
    # Sign convention: the largest-magnitude entry of each eigenvector is positive.
    idx = jnp.argmax(jnp.abs(V), axis=0)
    V = V * jnp.sign(V[idx, jnp.arange(k)])[None, :]
    vectors = jax.vmap(flat.unravel, in_axes=1)(V)
    return Eigenpairs(theta, vectors, res, res <= tol, matvecs, cycles)


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

    Thick-restart block Lanczos with full reorthogonalisation: each cycle grows the block Krylov
    space $[U, ΘU, \dots, Θ^{q-1}U]$ one `jax.vmap`-ed block matvec at a time, solves the
    Rayleigh-Ritz problem after every block and stops the cycle as soon as the Krylov residual
    estimate says the top `k` pairs have converged; it then measures the exact residuals
    $\|Θu - λu\|/|λ|$ from stored products, and restarts from the best `block_size` Ritz vectors
    (whose images are already known, so restarting costs no matvec) unless they meet `tol`, up to
    `max_restarts` cycles. When the basis would not fit in the dimension, the dense matrix is
    formed and `eigh` is used instead.

    **Arguments:**

    - `operator`: a lineax operator with `lineax.symmetric_tag` and equal input/output structure, e.g.
        `ds.sntk_operator(model, problem)`.
    - `k`: number of eigenpairs, `1 <= k <= dimension`.
    - `key`: a JAX PRNG key for the random starting block.
    - `tol`: relative residual tolerance; default `1e-6` in float64, `1e-3` in float32.
    - `block_size`: vectors per block matvec; default `k + max(2, k // 2)`. Larger blocks cost more
        matvecs per cycle but converge in fewer cycles and batch better.
    - `krylov_blocks`: maximum number of blocks per cycle (Krylov depth; a cycle stops early
        once converged). Default: a basis of about `max(16 block_size, 128)` vectors, capped so
        that the basis and its images stay within ~2 GB (float64) and at half the dimension.
    - `max_restarts`: maximum number of cycles.
    - `init`: optional warm start, vectors in the operator's input structure with a leading axis
        (e.g. `previous.vectors` from a nearby operator).

    **Returns:**

    An [`Eigenpairs`][diffrax_sntk.Eigenpairs]: `values` (descending), `vectors` (input structure,
    leading axis `k`), `residuals`, `converged` flags and `num_matvecs`. Unpacks as
    `values, vectors = top_eigenpairs(...)`.
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
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}.")
    b = k + max(2, k // 2) if block_size is None else block_size
    if not isinstance(b, int) or b < k:
        raise ValueError(f"`block_size` must be an int >= k={k}, got {block_size}.")
    b = min(b, n)
    if krylov_blocks is None:
        # A deep basis: cycles stop early once converged, so depth costs no matvecs, and few
        # restarts converge in fewer matvecs. Capped so that the stored basis and its images
        # (2 × n × depth numbers) stay within ~2 GB in float64, and below the dimension.
        depth = min(max(16 * b, 128), max(4 * b, 125_000_000 // n), max(2 * b, n // 2))
        q = max(2, depth // b)
    else:
        q = krylov_blocks
    if not isinstance(q, int) or q < 2:
        raise ValueError(f"`krylov_blocks` must be an int >= 2, got {krylov_blocks}.")
    if not isinstance(max_restarts, int) or max_restarts < 1:
        raise ValueError(f"`max_restarts` must be an int >= 1, got {max_restarts}.")
    if init is not None:
        try:
            jax.eval_shape(lambda v: jax.vmap(operator.mv)(v), init)
        except Exception as e:
            raise ValueError(
                "`init` must be vectors in the operator's input structure with a leading axis."
            ) from e
    tol_arr = jnp.asarray(tol, dtype)
    restarts = jnp.asarray(max_restarts)
    return _top_eigenpairs_impl(operator, k, key, tol_arr, b, q, restarts, init)
