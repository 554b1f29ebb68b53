r"""Low-rank natural gradient: an optax transformation that preconditions the gradient with the
top-k eigenpairs of the Gauss–Newton matrix.

With J the trajectory (or readout) Jacobian, H_L the loss Hessian in output space and
G = Jᵀ H_L J the Gauss–Newton matrix with top-k eigenpairs (s_i, u_i),

$$\Delta\theta = -\eta\Big[g - \sum_{i\le k}\frac{s_i}{s_i+\delta}(u_i^\top g)\,u_i\Big]
              = -\eta\,\delta\,(G_k + \delta I)^{-1} g .$$

Gradient descent is stable only for η < 2/λ_max, and near a fold λ_max grows like λ_c⁻² in a single
(or very few) directions: the paper's collapsed sNTK channel. The step above leaves the bulk of the
spectrum alone (it is plain gradient descent there) and caps the curvature seen along the top-k
directions at δ s_i/(s_i + δ) < δ, so with δ of the order of the bulk curvature s_{k+1} the stable
learning rate no longer depends on the amplified channel.

The eigenpairs are refreshed every `refresh_every` steps by one pass of a warm-started, shifted
Nyström approximation (randomised subspace iteration): the previous eigenbasis Q (k + oversample
columns) is pushed through G with `k + oversample` batched JVP+VJP pairs, Y = G Q, and the
eigendecomposition of the Nyström approximation Y (QᵀY)⁺ Yᵀ gives the new basis and values. Its
range is range(G Q), so successive refreshes are subspace iteration on a slowly changing G.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from ._misc import RESULTS, error_if_not

__all__ = [
    "LowRankNaturalGradientState",
    "low_rank_natural_gradient",
    "scale_by_low_rank_natural_gradient",
]


class LowRankNaturalGradientState(NamedTuple):
    """State of `low_rank_natural_gradient` (a NamedTuple of arrays: jit-, vmap- and
    serialisation-friendly).

    **Fields:**

    - `count`: number of updates applied so far (int32 scalar).
    - `basis`: the current eigenbasis of the Gauss–Newton matrix on flattened parameters,
        shape `(num_params, k + oversample)`, orthonormal columns in descending eigenvalue order.
        The first `rank` columns precondition; all of them warm-start the next refresh.
    - `eigenvalues`: the matching Nyström eigenvalue estimates, shape `(k + oversample,)`.
    - `damping`: the damping δ in use (the fixed number, or the current automatic estimate).
    - `num_refresh_failures`: how many refreshes so far produced non-finite eigenpairs (int32
        scalar). Such a refresh keeps the previous basis, eigenvalues and damping; before the
        first successful refresh that is the random starting basis with zero eigenvalues, i.e.
        the step is plain (scaled) gradient descent.
    - `result`: a `ds.RESULTS` item, the outcome of the latest refresh:
        `RESULTS.successful`, or `RESULTS.refresh_failed` when it produced non-finite
        eigenpairs (typically a non-finite Jacobian product: check the ODE solve). Also
        readable as `last_result`.
    """

    count: Int[Array, ""]  # pyright: ignore[reportIncompatibleMethodOverride]
    basis: Float[Array, "params block"]
    eigenvalues: Float[Array, " block"]
    damping: Float[Array, ""]
    num_refresh_failures: Int[Array, ""]
    result: RESULTS

    @property
    def last_result(self) -> RESULTS:
        """The outcome of the latest refresh (the `result` field)."""
        return self.result


# ----------------------------------------------------------------------------------------------
# Validation


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_damping(damping: Any) -> float | str:
    if isinstance(damping, str):
        if damping != "auto":
            raise ValueError(f"`damping` must be 'auto' or a positive number, got {damping!r}.")
        return damping
    try:
        value = float(damping)
    except (TypeError, ValueError):
        raise ValueError(
            f"`damping` must be 'auto' or a positive number, got {damping!r}."
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`damping` must be 'auto' or a positive number, got {damping!r}.")
    return value


def _check_loss_hessian(loss_hessian: Any) -> None:
    if loss_hessian is None or isinstance(loss_hessian, lx.AbstractLinearOperator):
        return
    if callable(loss_hessian):
        return
    if jnp.shape(loss_hessian) != ():
        raise ValueError(
            "`loss_hessian` must be None, a non-negative scalar weight, a lineax operator on the "
            f"output space, or a scalar loss function of the outputs; got an array of shape "
            f"{jnp.shape(loss_hessian)}."
        )
    # A Python number is configuration, checked here; an array weight (possibly traced) is
    # checked where it is used, with `eqx.error_if` (see `_hessian_mv`).
    if isinstance(loss_hessian, (int, float, np.number)) and not loss_hessian >= 0:
        raise ValueError(
            f"`loss_hessian` as a scalar weight must be non-negative, got {loss_hessian}."
        )


def _check_tree(tree, structure, name: str, what: str) -> None:
    got, want = jtu.tree_structure(tree), jtu.tree_structure(structure)
    if got != want:
        raise ValueError(f"`{name}` must have the structure of {what} {want}, got {got}.")
    for leaf, s in zip(jtu.tree_leaves(tree), jtu.tree_leaves(structure), strict=True):
        if jnp.shape(leaf) != tuple(s.shape):
            raise ValueError(
                f"`{name}` has a leaf of shape {jnp.shape(leaf)}, but {what} expects {s.shape}."
            )


def _check_refresh_tol(refresh_tol: Any) -> float | None:
    if refresh_tol is None:
        return None
    try:
        value = float(refresh_tol)
    except (TypeError, ValueError):
        raise ValueError(
            f"`refresh_tol` must be None or a number in [0, 1], got {refresh_tol!r}."
        ) from None
    if not 0 <= value <= 1:
        raise ValueError(f"`refresh_tol` must be None or a number in [0, 1], got {refresh_tol!r}.")
    return value


def _num_params(params: PyTree) -> int:
    return int(sum(np.prod(jnp.shape(x)) for x in jtu.tree_leaves(params)))


# ----------------------------------------------------------------------------------------------
# Numerics
#
# Why our own block method rather than `ds.top_eigenpairs` or matfree: the refresh must (i) be
# warm-started from the previous basis, (ii) cost a fixed, small number of JVP+VJP pairs (one
# block, batched with `vmap`) so that the jitted step has a static cost, and (iii) return an
# estimate of the next eigenvalue for the automatic damping. matfree's `eigh_partial` is
# single-vector Lanczos without warm start; `ds.top_eigenpairs` iterates to a tolerance (a while
# loop of unpredictable cost). One pass of a shifted Nyström approximation does all three.


def _gauss_newton_block(jacobian, hess_mv, unravel, Q):
    """Y = Jᵀ H_L J Q for a block Q of flat parameter vectors (columns): one batched JVP and one
    batched VJP solve."""
    jt = jacobian.transpose()

    def one(q):
        r = hess_mv(jacobian.mv(unravel(q)))
        return jfu.ravel_pytree(jt.mv(r))[0].astype(q.dtype)

    return jax.vmap(one, in_axes=1, out_axes=1)(Q)


def _nystrom(Q, Y):
    """Eigenpairs of the shifted Nyström approximation G ≈ Y (QᵀY)⁺ Yᵀ (Q orthonormal, Y = GQ).

    The shift ν (Tropp, Yurtsever, Udell & Cevher 2017, "Fixed-rank approximation of a positive
    semidefinite matrix from streaming data", Alg. 3) keeps the core matrix positive definite in
    floating point; the pseudo-inverse square root via `eigh` (instead of a Cholesky factor) also
    survives an exactly rank-deficient G.
    """
    n, m = Q.shape
    dtype = Q.dtype
    eps = jnp.finfo(dtype).eps
    nu = jnp.sqrt(jnp.asarray(n, dtype)) * eps * jnp.linalg.norm(Y)
    Y_nu = Y + nu * Q
    M = Q.T @ Y_nu
    M = 0.5 * (M + M.T)
    d, V = jnp.linalg.eigh(M)
    keep = d > m * eps * jnp.maximum(jnp.max(d), jnp.finfo(dtype).tiny)
    inv_sqrt = jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, d, 1)), 0)
    B = Y_nu @ (V * inv_sqrt[None, :])
    U, sigma, _ = jnp.linalg.svd(B, full_matrices=False)
    lam = jnp.maximum(sigma**2 - nu, 0)
    return lam, U


def _auto_damping(lam, rank):
    # The (k+1)-th Nyström value estimates the top of the bulk. With rank = number of parameters
    # (no bulk left) the smallest kept value is used instead.
    m = lam.shape[0]
    est = lam[rank] if m > rank else lam[rank - 1]
    floor = jnp.maximum(jnp.finfo(lam.dtype).eps * lam[0], jnp.finfo(lam.dtype).tiny)
    return jnp.maximum(est, floor)


def _precondition(g, U, lam, delta, rank):
    """g − Σ_{i<k} s_i/(s_i+δ) (u_iᵀg) u_i = δ (G_k + δI)⁻¹ g."""
    Uk, sk = U[:, :rank], lam[:rank]
    return g - Uk @ ((sk / (sk + delta)) * (Uk.T @ g))


@eqx.filter_jit
def _initial_basis(seed, n: int, m: int, dtype) -> Float[Array, "n m"]:
    """An orthonormalised Gaussian n × m block (static shape) drawn from `PRNGKey(seed)`."""
    Q, _ = jnp.linalg.qr(jr.normal(jr.PRNGKey(seed), (n, m), dtype))
    return Q


# ----------------------------------------------------------------------------------------------
# Loss Hessian in output space


def _hessian_mv(loss_hessian, jacobian, outputs):
    """The map r ↦ H_L r on the Jacobian's output space."""
    out_struct = jacobian.out_structure()
    if loss_hessian is None:
        return lambda r: r
    if isinstance(loss_hessian, lx.AbstractLinearOperator):
        _check_tree(
            loss_hessian.in_structure(),
            out_struct,
            "loss_hessian",
            "the output space of `jacobian`",
        )
        return loss_hessian.mv
    if callable(loss_hessian):
        if outputs is None:
            raise ValueError(
                "`loss_hessian` is a loss function, so `update` needs `outputs=` (the model's "
                "current predictions, the point at which the loss Hessian is taken)."
            )
        _check_tree(outputs, out_struct, "outputs", "the output space of `jacobian`")
        shape = jax.eval_shape(loss_hessian, outputs)
        if not isinstance(shape, jax.ShapeDtypeStruct) or shape.shape != ():
            got = getattr(shape, "shape", type(shape).__name__)
            raise ValueError(
                "`loss_hessian` as a loss function must return a scalar loss, got output of "
                f"shape {got}."
            )
        grad = jax.grad(loss_hessian)
        return lambda r: jax.jvp(grad, (outputs,), (r,))[1]
    weight = error_if_not(
        jnp.asarray(loss_hessian),
        jnp.asarray(loss_hessian) >= 0,
        "`loss_hessian` as a scalar weight must be non-negative (and not NaN).",
    )
    return lambda r: jtu.tree_map(lambda x: weight.astype(x.dtype) * x, r)


# ----------------------------------------------------------------------------------------------
# The transformation


def _make(
    learning_rate,
    rank: int,
    refresh_every: int,
    damping,
    oversample: int,
    loss_hessian,
    seed,
    refresh_tol=None,
) -> optax.GradientTransformationExtraArgs:
    rank = _check_int("rank", rank, 1)
    refresh_tol = _check_refresh_tol(refresh_tol)
    refresh_every = _check_int("refresh_every", refresh_every, 1)
    oversample = _check_int("oversample", oversample, 0)
    damping = _check_damping(damping)
    _check_loss_hessian(loss_hessian)
    if damping == "auto" and oversample == 0:
        raise ValueError(
            "`damping='auto'` estimates δ from the (k+1)-th eigenvalue, so it needs "
            "`oversample >= 1`; pass a number as `damping` to use `oversample=0`."
        )
    if learning_rate is not None and not callable(learning_rate):
        lr = jnp.asarray(learning_rate)
        if lr.shape != ():
            raise ValueError(
                f"`learning_rate` must be a scalar or a schedule, got shape {lr.shape}."
            )
    seed = _check_int("seed", seed, 0)
    loss_hessian_default = loss_hessian

    def block_size(n: int) -> int:
        if rank > n:
            raise ValueError(
                f"`rank`={rank} exceeds the number of parameters ({n}); use `rank <= {n}`."
            )
        return min(rank + oversample, n)

    def init_fn(params: PyTree) -> LowRankNaturalGradientState:
        flat, _ = jfu.ravel_pytree(params)
        if flat.size == 0:
            raise ValueError("`params` has no array leaves to optimise.")
        if not jnp.issubdtype(flat.dtype, jnp.floating):
            raise TypeError(f"`params` must be floating point, got dtype {flat.dtype}.")
        n = int(flat.size)
        m = block_size(n)
        # A Gaussian start: the first refresh is then one pass of randomised Nyström. Drawn
        # with `jax.random` from the seed (computed, not a constant baked into a compiled
        # program); one jitted function per (n, m, dtype), so eager `init` compiles once.
        Q = _initial_basis(jnp.asarray(seed, jnp.uint32), n, m, jnp.dtype(flat.dtype))
        delta = jnp.asarray(1.0 if damping == "auto" else damping, flat.dtype)
        return LowRankNaturalGradientState(
            count=jnp.zeros((), jnp.int32),
            basis=Q,
            eigenvalues=jnp.zeros((m,), flat.dtype),
            damping=delta,
            num_refresh_failures=jnp.zeros((), jnp.int32),
            # A jax (not numpy) array inside the item, as `update` returns: otherwise a jitted
            # step sees two argument types and compiles twice.
            result=jtu.tree_map(jnp.asarray, RESULTS.successful),
        )

    def update_fn(
        updates: PyTree,
        state: LowRankNaturalGradientState,
        params: PyTree | None = None,
        *,
        jacobian: lx.AbstractLinearOperator | None = None,
        loss_hessian: Any = None,
        outputs: PyTree | None = None,
        **extra_args,
    ):
        del params, extra_args
        if jacobian is None:
            raise ValueError(
                "`update` needs `jacobian=`: the Jacobian operator of the model outputs at the "
                "current parameters, e.g. `ds.jacobian_operator(model, problem)`."
            )
        if not isinstance(jacobian, lx.AbstractLinearOperator):
            raise TypeError(
                f"`jacobian` must be a lineax operator, got {type(jacobian).__name__}."
            )
        _check_tree(updates, jacobian.in_structure(), "updates", "the input space of `jacobian`")
        if loss_hessian is None:
            loss_hessian = loss_hessian_default
        else:
            _check_loss_hessian(loss_hessian)
        hess_mv = _hessian_mv(loss_hessian, jacobian, outputs)

        g, unravel = jfu.ravel_pytree(updates)
        n, m = state.basis.shape
        if g.size != n:
            raise ValueError(
                f"`updates` has {g.size} parameters but the optimizer state was initialised "
                f"with {n}."
            )
        block_size(n)  # re-check `rank` against the parameter count
        dtype = state.basis.dtype
        g = g.astype(dtype)

        def refresh(s: LowRankNaturalGradientState):
            # Orthonormalise the warm start (cheap: n × m) so that roundoff never accumulates.
            Q, _ = jnp.linalg.qr(s.basis)
            Y = _gauss_newton_block(jacobian, hess_mv, unravel, Q)
            lam, U = _nystrom(Q, Y)
            ok = jnp.all(jnp.isfinite(Y)) & jnp.all(jnp.isfinite(lam)) & jnp.all(jnp.isfinite(U))
            # A failed refresh (non-finite products) keeps the previous eigenpairs, and says
            # so in `result` and `num_refresh_failures`.
            U = jnp.where(ok, U, s.basis).astype(dtype)
            lam = jnp.where(ok, lam, s.eigenvalues).astype(dtype)
            if damping == "auto":
                delta = jnp.where(ok, _auto_damping(lam, rank), s.damping).astype(dtype)
            else:
                delta = s.damping
            return s._replace(
                basis=U,
                eigenvalues=lam,
                damping=delta,
                num_refresh_failures=s.num_refresh_failures + jnp.where(ok, 0, 1).astype(
                    s.num_refresh_failures.dtype
                ),
                result=RESULTS.where(ok, RESULTS.successful, RESULTS.refresh_failed),
            )

        due = state.count % refresh_every == 0
        if refresh_tol is not None:
            # Adaptive: also refresh when the gradient has left the preconditioned subspace,
            # ‖g − U_k U_kᵀ g‖ > tol ‖g‖ (near a bifurcation the amplified channel turns, and a
            # stale basis would miss it). The basis columns are orthonormal after a refresh.
            Uk = state.basis[:, :rank]
            outside = jnp.linalg.norm(g - Uk @ (Uk.T @ g))
            due = due | (outside > refresh_tol * jnp.linalg.norm(g))
        state = jax.lax.cond(due, refresh, lambda s: s, state)
        p = _precondition(g, state.basis, state.eigenvalues, state.damping, rank)
        if learning_rate is not None:
            lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
            p = -jnp.asarray(lr, dtype) * p
        new_updates = jtu.tree_map(
            lambda new, old: new.astype(jnp.result_type(old)), unravel(p), updates
        )
        count = optax.safe_increment(state.count)
        return new_updates, state._replace(count=count)

    return optax.GradientTransformationExtraArgs(
        init_fn,  # pyright: ignore[reportArgumentType]
        update_fn,  # pyright: ignore[reportArgumentType]
    )


def scale_by_low_rank_natural_gradient(
    rank: int = 4,
    refresh_every: int = 10,
    *,
    damping: float | str = "auto",
    oversample: int = 4,
    loss_hessian: float | ArrayLike | lx.AbstractLinearOperator | Callable | None = None,
    seed: int = 0,
    refresh_tol: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The low-rank natural-gradient preconditioner alone, g ↦ δ (G_k + δI)⁻¹ g, without the
    learning rate (chain it with `optax.scale_by_learning_rate`, momentum, clipping, ...).

    The arguments are those of `low_rank_natural_gradient` except `learning_rate`.

    **Returns:**

    An `optax.GradientTransformationExtraArgs` whose state is a `LowRankNaturalGradientState`.
    Its `update` needs the extra argument `jacobian=`.
    """
    return _make(None, rank, refresh_every, damping, oversample, loss_hessian, seed, refresh_tol)


def low_rank_natural_gradient(
    learning_rate: float | optax.Schedule,
    rank: int = 4,
    refresh_every: int = 10,
    *,
    damping: float | str = "auto",
    oversample: int = 4,
    loss_hessian: float | ArrayLike | lx.AbstractLinearOperator | Callable | None = None,
    seed: int = 0,
    refresh_tol: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Low-rank natural gradient: gradient descent preconditioned by the top-k eigenpairs of the
    Gauss–Newton matrix G = Jᵀ H_L J.

    $$\Delta\theta = -\eta\Big[g - \sum_{i=1}^{k}\frac{s_i}{s_i+\delta}(u_i^\top g)\,u_i\Big]
                   = -\eta\,\delta\,(G_k+\delta I)^{-1} g,\qquad
                   G_k = \sum_{i\le k} s_i u_i u_i^\top.$$

    Along the bulk of the spectrum this is plain gradient descent with learning rate η; along the
    top-k directions the curvature is capped at δ s_i/(s_i+δ) < δ, so near a bifurcation, where
    the sNTK collapses onto one amplified channel (arXiv 2605.12763), the stable learning rate no
    longer shrinks like λ_c². With k = number of parameters and `learning_rate = 1/δ` the step is
    the damped Gauss–Newton (Levenberg–Marquardt) step −(G + δI)⁻¹ g.

    ```python
    opt = ds.low_rank_natural_gradient(1e-2, rank=4, refresh_every=10)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        J = ds.jacobian_operator(model, problem)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, state = opt.update(grads, state, params, jacobian=J)
        return eqx.apply_updates(model, updates), state, loss
    ```

    **Arguments:**

    - `learning_rate`: η, a scalar or an optax schedule of the step count.
    - `rank`: k, the number of preconditioned directions (1 ≤ k ≤ number of parameters).
    - `refresh_every`: recompute the eigenpairs every this many steps (the first step always
        refreshes). The decision is a `lax.cond` on the step count, so a jitted step compiles
        once; a refresh costs `rank + oversample` JVP+VJP pairs, batched with `jax.vmap`.
    - `damping`: δ > 0, or `"auto"` (default): the (k+1)-th eigenvalue estimate of G, i.e. the
        top of the bulk curvature, re-estimated at every refresh (with k = number of parameters:
        the k-th value).
    - `oversample`: extra basis vectors carried beyond `rank` (default 4). They make the
        subspace iteration converge faster and give the (k+1)-th value for `damping="auto"`.
    - `loss_hessian`: H_L on the Jacobian's output space. `None` (default): the identity, the
        Gauss–Newton matrix of ½‖r‖². A scalar w: w·I (for `jnp.mean((y - target)**2)` over M
        elements, w = 2/M makes G the exact Gauss–Newton matrix of that loss). A lineax operator
        on the output space. Or a scalar loss function `loss(outputs)`: its Hessian at the
        `outputs=` passed to `update` is used (Hessian-vector products by forward-over-reverse).
        With `damping="auto"` a constant scale of H_L cancels and does not change the step;
        with a numeric damping it sets the units of δ. Can be overridden per call in `update`.
    - `seed`: seed of the random initial basis (drawn with `jax.random` at `init`; default 0).
    - `refresh_tol`: `None` (default): refresh on the `refresh_every` schedule only. A number
        τ in [0, 1]: also refresh whenever the gradient has left the preconditioned subspace,
        ‖g − U_k U_kᵀ g‖ > τ ‖g‖ (U_k: the current top-k basis), so that refreshes follow the
        geometry (often near a bifurcation, where the amplified channel turns; rarely far from
        one); `refresh_every` is then the longest interval between refreshes. Checking costs
        two products with the n × k basis per step.

    For a step that computes the loss gradient and J from one linearisation (cheaper than a
    separate gradient, and the refresh then reuses it), see `ds.trajectory_and_jacobian`.

    **Returns:**

    An `optax.GradientTransformationExtraArgs`. `init(params)` returns a
    `LowRankNaturalGradientState`; `update(grads, state, params, *, jacobian, loss_hessian=None,
    outputs=None)` needs `jacobian`, any lineax operator from the parameters (the structure of
    `grads`) to the outputs, e.g. `ds.jacobian_operator(model, problem)` built at the current
    parameters for the current minibatch (`space="output"` for a readout).

    A refresh that produces non-finite eigenpairs (a NaN or inf in a Jacobian product) keeps the
    previous ones; it is counted in the state's `num_refresh_failures` and reported in its
    `result` (`ds.RESULTS.refresh_failed`), never raised.
    """
    if learning_rate is None:
        raise ValueError(
            "`learning_rate` must be a scalar or a schedule; for the preconditioner alone use "
            "`scale_by_low_rank_natural_gradient`."
        )
    return _make(
        learning_rate, rank, refresh_every, damping, oversample, loss_hessian, seed, refresh_tol
    )
