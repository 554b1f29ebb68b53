"""Pseudo-arclength continuation of equilibria with detection, localisation and classification of
codimension-one bifurcations (fold, transcritical, pitchfork, Hopf): the result types, their
assembly and the public `continuation`.

The continuation is one compiled program (the stepper in `_continuation.py`): a padded branch
buffer with a valid length, and a fixed number of event slots, each localised and classified
inside the program. So `continuation` runs under `jax.jit` and `jax.vmap`, and eagerly it
compiles once per vector field and configuration. `Branch` exposes the valid part and builds the
`Bifurcation`s from the event slots on the host (`bifurcations_from_events`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PyTree, Shaped

from ._continuation import (
    KINDS,
    ContinuationProblem,
    ScalarFamily,
    classify_events,
    event_mask,
    make_options,
    step_loop,
    zeros_like,
)
from ._misc import RESULTS, check_vector_field, error_if_nonfinite, error_if_not
from ._normal_forms import (
    AbstractNormalForm,
    BranchPointNormalForm,
    FoldNormalForm,
    HopfNormalForm,
)


class Bifurcation(eqx.Module):
    """One detected, localised and classified codimension-one bifurcation of an equilibrium.

    **Fields:**

    - `kind`: `"fold"`, `"transcritical"`, `"pitchfork"` or `"hopf"`.
    - `parameter`: the parameter value (continuation), or the fractional checkpoint index
        `k + s` (tracking; the parameters are interpolated linearly between checkpoints k, k+1).
    - `state`: the equilibrium at the bifurcation.
    - `eigenvalues`: the critical eigenvalue (`(1,)`), or the Hopf pair `(λ, λ̄)` with `Im λ > 0`.
    - `right_eigenvector`, `left_eigenvector`: `v` (unit norm) and `w` with `wᵀv = 1` (real for a
        zero eigenvalue, with the largest-|entry| component of `v` positive; complex for Hopf).
    - `normal_form`: the coefficients; `normal_form.convention` states their convention.
    - `direction`: `+1` if the critical eigenvalue's real part goes from negative to positive in
        the direction of travel (increasing arclength/checkpoint index; stability lost), else `-1`.
    - `located`: the localisation met its tolerance.
    - `branch`: which tracked equilibrium branch (tracking), `0` for a continuation.
    - `index`: the step of the branch after which the bifurcation lies.
    - `result`: `RESULTS.successful`, `RESULTS.localisation_failed` (the parameter value is
        approximate), or `RESULTS.singular_linear_solve` (non-finite normal-form coefficients).
    - `tangent`: the unit direction `(δx, δμ)` of the branch across the bifurcation, along the
        direction of travel (the chord of the continuation step that contains it; in tracking,
        `δμ` is along the segment between checkpoints); `None` where no branch was followed
        (births and deaths). `switch_branch` uses it to tell the old branch from the new one.
    """

    kind: str = eqx.field(static=True)
    parameter: Float[Array, ""]
    state: Float[Array, " state"]
    eigenvalues: Complex[Array, " k"]
    right_eigenvector: Shaped[Array, " state"]
    left_eigenvector: Shaped[Array, " state"]
    normal_form: AbstractNormalForm
    direction: int = eqx.field(static=True)
    located: bool = eqx.field(static=True)
    branch: int = eqx.field(static=True, default=0)
    index: int = eqx.field(static=True, default=0)
    result: RESULTS = eqx.field(default_factory=lambda: RESULTS.successful)
    tangent: Float[Array, " state_and_parameter"] | None = None

    @property
    def convention(self) -> str:
        return self.normal_form.convention

    @property
    def criticality(self) -> str | None:
        return self.normal_form.criticality


class BifurcationEvents(eqx.Module):
    """The bifurcations of a branch as padded arrays (leading axis: `max_bifurcations` slots),
    what `continuation` returns under `jit`/`vmap`; `Branch.bifurcations` builds `Bifurcation`s
    from it eagerly.

    **Fields:** `valid` (a slot holds an event inside the parameter range), `index` (the step
    after which it lies), `kind` (index into `("fold", "transcritical", "pitchfork", "hopf")`),
    `parameter`, `state`, `eigenvalues` (`(λ, λ̄)`; the second entry is meaningless for a zero
    eigenvalue), `right_eigenvector`, `left_eigenvector`, the coefficients `a, b1, b2, b3`
    (zero eigenvalue) and `omega, c1, transversality` (Hopf), `direction`, `located`, `result`
    per slot (`RESULTS.not_a_bifurcation` marks a spurious event: a test function changed but the
    critical eigenvalue is not of the expected type; `RESULTS.localisation_failed`; or the
    normal-form solves' failure), `normal_form_result` (the coefficients' own result),
    `num_detected` (events flagged along the branch; more than the number of slots means some
    were not stored) and `tangent` (the unit chord `(δx, δμ)` of the step holding the event).
    """

    valid: Bool[Array, " events"]
    index: Int[Array, " events"]
    kind: Int[Array, " events"]
    parameter: Float[Array, " events"]
    state: Float[Array, "events state"]
    eigenvalues: Complex[Array, "events 2"]
    right_eigenvector: Complex[Array, "events state"]
    left_eigenvector: Complex[Array, "events state"]
    a: Float[Array, " events"]
    b1: Float[Array, " events"]
    b2: Float[Array, " events"]
    b3: Float[Array, " events"]
    omega: Float[Array, " events"]
    c1: Complex[Array, " events"]
    transversality: Float[Array, " events"]
    direction: Int[Array, " events"]
    located: Bool[Array, " events"]
    result: RESULTS
    normal_form_result: RESULTS
    num_detected: Int[Array, ""]
    tangent: Float[Array, "events state_and_parameter"]


def _host_length(length) -> int | None:
    """The valid length as a Python int, or `None` when it is traced or batched."""
    if jnp.ndim(length) != 0:
        return None
    try:
        return int(length)
    except jax.errors.ConcretizationTypeError:
        return None


class Branch(eqx.Module):
    """A branch of equilibria from `continuation`.

    The buffers have `max_steps + 1` rows, of which the first `length` are the branch; eagerly,
    `parameters (S,)`, `states (S, N)`, `eigenvalues (S, N)` (sorted by decreasing real part),
    `stable (S,)` and `signatures (S, 4)` give the valid part and `bifurcations` a tuple of
    `Bifurcation` (in order along the branch). Under `jit`/`vmap` read the `*_buffer` fields,
    `length` and `events` (a `BifurcationEvents`).

    `result` is `RESULTS.successful` when the branch reached an end of the parameter range,
    `RESULTS.continuation_max_steps`, `RESULTS.continuation_step_too_small`, or
    `RESULTS.no_fixed_point` (the initial point did not converge). `left_range` says that the
    branch turned back and left through `p0`. `status` gives the same as a string
    (`"completed"`, `"left_range"`, `"max_steps"`, `"step_size_too_small"`,
    `"initial_point_not_converged"`); `successful` means `"completed"`.
    """

    parameter_buffer: Float[Array, " buffer"]
    state_buffer: Float[Array, "buffer state"]
    eigenvalue_buffer: Complex[Array, "buffer state"]
    signature_buffer: Int[Array, "buffer 4"]
    event_mask: Bool[Array, "buffer 2"]
    length: Int[Array, ""]
    events: BifurcationEvents
    result: RESULTS
    left_range: Bool[Array, ""]

    def _valid(self, buffer):
        n = _host_length(self.length)
        return buffer if n is None else buffer[:n]

    @property
    def parameters(self) -> Float[Array, " steps"]:
        return self._valid(self.parameter_buffer)

    @property
    def states(self) -> Float[Array, "steps state"]:
        return self._valid(self.state_buffer)

    @property
    def eigenvalues(self) -> Complex[Array, "steps state"]:
        return self._valid(self.eigenvalue_buffer)

    @property
    def signatures(self) -> Int[Array, "steps 4"]:
        return self._valid(self.signature_buffer)

    @property
    def stable(self) -> Bool[Array, " steps"]:
        return jnp.all(self.eigenvalues.real < 0, axis=-1)

    @property
    def num_steps(self) -> int:
        n = _host_length(self.length)
        if n is None:
            raise TypeError("`Branch.num_steps` needs a concrete branch; read `length` under jit")
        return n

    @property
    def status(self) -> str:
        if self.result == RESULTS.successful:
            return "left_range" if bool(self.left_range) else "completed"
        for code, name in (
            (RESULTS.continuation_max_steps, "max_steps"),
            (RESULTS.continuation_step_too_small, "step_size_too_small"),
            (RESULTS.no_fixed_point, "initial_point_not_converged"),
        ):
            if self.result == code:
                return name
        return RESULTS[self.result]

    @property
    def successful(self) -> bool:
        return self.status == "completed"

    @property
    def bifurcations(self) -> tuple[Bifurcation, ...]:
        return bifurcations_from_events(self.events, self.state_buffer.dtype)

    @property
    def num_spurious_events(self) -> int:
        """Events whose critical eigenvalue was not of the expected type (not in
        `bifurcations`; their slots have `RESULTS.not_a_bifurcation`)."""
        ev = self.events
        return int(
            np.sum(np.asarray(ev.valid) & np.asarray(ev.result == RESULTS.not_a_bifurcation))
        )


@eqx.filter_jit
def continue_family(
    problem: ContinuationProblem,
    x0,
    s0,
    s1,
    h0,
    h_max,
    h_min,
    max_steps: int,
    detect: bool,
    max_events: int,
    start=None,
) -> Branch:
    """The compiled continuation of `problem.family` from near `(x0, s0)` towards `s1`, as a
    `Branch`. `start = (anchor, normal, tau)` replaces the first solve at fixed `s0` by the
    solve on the hyperplane `normalᵀ(z − anchor) = 0`, oriented along `tau` (see
    `step_loop`)."""
    detect = detect and max_events > 0
    st, lo, hi = step_loop(
        problem, x0, s0, s1, h0, h_max, h_min, max_steps, detect, max(max_events, 1), start
    )
    mask, sigs = event_mask(st)
    classified = lambda: BifurcationEvents(**classify_events(problem, st, lo, hi))
    if detect:
        events = classified()
    else:
        # Nothing is queued: empty slots of the right structure, without compiling the
        # classification.
        events = zeros_like(jax.eval_shape(classified))
        mask = jnp.zeros_like(mask)
    return Branch(
        parameter_buffer=st.ys[:, -1],
        state_buffer=st.ys[:, :-1],
        eigenvalue_buffer=st.evs,
        signature_buffer=sigs,
        event_mask=mask,
        length=st.length,
        events=events,
        result=st.result,
        left_range=st.left_range,
    )


@jax.jit
def default_start(x0, s0, s1):
    """`continue_family`'s default `start`: the solve at fixed `s0` from `(x0, s0)`, its
    tangent oriented towards `s1`."""
    e_s = jnp.zeros((x0.shape[0] + 1,), x0.dtype).at[-1].set(1)
    sign = jnp.where(s1 > s0, 1.0, -1.0).astype(x0.dtype)
    return jnp.concatenate([x0, s0[None]]), e_s, sign * e_s


def bifurcations_from_events(
    events: BifurcationEvents, dtype, parameter_map=lambda s: s, branch: int = 0
) -> tuple[Bifurcation, ...]:
    """Host side: the `Bifurcation`s of the valid, non-spurious slots, in order along the
    branch."""
    if _host_length(events.num_detected) is None:
        raise TypeError(
            "`bifurcations` is built on the host from a concrete, unbatched branch; under "
            "`jit`/`vmap` read `branch.events` (padded arrays) instead"
        )
    host = jax.device_get(events)
    spurious = np.asarray(events.result == RESULTS.not_a_bifurcation)
    out = []
    for e in np.where(np.asarray(host.valid) & ~spurious)[0]:
        kind = KINDS[int(host.kind[e])]
        result = jtu.tree_map(lambda a, e=e: a[e], events.result)
        nf_result = jtu.tree_map(lambda a, e=e: a[e], events.normal_form_result)

        def scalar(name, e=e):
            return jnp.asarray(getattr(host, name)[e], dtype)

        if kind == "hopf":
            c1 = jnp.asarray(host.c1[e])
            nf: AbstractNormalForm = HopfNormalForm(
                omega=scalar("omega"),
                c1=c1,
                l1=jnp.real(c1),
                transversality=scalar("transversality"),
                result=nf_result,
            )
            lam = jnp.asarray(host.eigenvalues[e])
            right, left = (
                jnp.asarray(host.right_eigenvector[e]),
                jnp.asarray(host.left_eigenvector[e]),
            )
        else:
            if kind == "fold":
                nf = FoldNormalForm(
                    a=scalar("a"),
                    a_f=scalar("b2") / 2,
                    b1=scalar("b1"),
                    b2=scalar("b2"),
                    result=nf_result,
                )
            else:
                nf = BranchPointNormalForm(
                    a=scalar("a"),
                    b1=scalar("b1"),
                    b2=scalar("b2"),
                    b3=scalar("b3"),
                    symmetric=kind == "pitchfork",
                    result=nf_result,
                )
            lam = jnp.asarray(host.eigenvalues[e, :1])
            right = jnp.asarray(host.right_eigenvector[e].real, dtype)
            left = jnp.asarray(host.left_eigenvector[e].real, dtype)
        out.append(
            Bifurcation(
                kind=kind,
                parameter=jnp.asarray(parameter_map(host.parameter[e]), dtype),
                state=jnp.asarray(host.state[e], dtype),
                eigenvalues=lam,
                right_eigenvector=right,
                left_eigenvector=left,
                normal_form=nf,
                direction=int(host.direction[e]),
                located=bool(host.located[e]),
                branch=branch,
                index=int(host.index[e]),
                result=result,
                tangent=jnp.asarray(host.tangent[e], dtype),
            )
        )
    return tuple(out)


def continuation(
    vector_field: Callable,
    x0: Float[ArrayLike, " state"],
    p0: float | Float[ArrayLike, ""],
    p1: float | Float[ArrayLike, ""],
    *,
    args: PyTree = None,
    step_size: float | None = None,
    max_step_size: float | None = None,
    min_step_size: float | None = None,
    max_steps: int = 1000,
    detect_bifurcations: bool = True,
    max_bifurcations: int = 16,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 20,
    parameter_tol: float | None = None,
    symmetry_tol: float | None = None,
) -> Branch:
    """Pseudo-arclength continuation of an equilibrium branch in a scalar parameter, with
    detection, localisation and classification of codimension-one bifurcations.

    The branch `{(x, μ): f(x, μ) = 0}` is followed from near `(x0, p0)` towards `μ = p1` with a
    tangent predictor and a Newton corrector on the arclength condition, so it passes folds. Between
    accepted points, a sign change of `det f_x` (a real eigenvalue through zero) or a change in the
    number of unstable eigenvalues not explained by it (a complex pair through the imaginary axis)
    is localised by regula falsi on the critical eigenvalue's real part, to `parameter_tol` in
    arclength (hence in `μ`). A real crossing where `dμ/ds` changes sign is a fold; otherwise a
    branch point, classified as a pitchfork when `b2 = 0` (Z2 symmetry) and a transcritical
    otherwise. Normal-form coefficients follow the conventions in `docs/bifurcations.md`.

    The whole computation is one compiled program (a `lax.while_loop` that steps, then
    localises the queued events with the same corrector, and a classification post-pass over
    the event slots), so it runs under `jax.jit` and `jax.vmap` (over `x0`, `args`, `p0`, `p1`;
    each batch member equals the eager result). Eagerly it compiles once per vector field and
    per value of the static settings (`max_steps`, the tolerances, `max_bifurcations`); the
    step sizes are traced. Spurious events (a test function changed but the critical eigenvalue
    is not of the expected type) are kept in `branch.events` with
    `RESULTS.not_a_bifurcation` and counted by `branch.num_spurious_events`; they are not in
    `branch.bifurcations`.

    **Arguments:**

    - `vector_field`: `vector_field(x, mu) -> dx/dt`, `mu` a scalar; with `args`,
        `vector_field(x, mu, args)`.
    - `x0`: an (approximate) equilibrium at `mu = p0`; it is corrected by Newton first.
    - `p0`, `p1`: start and end of the parameter range (either order).
    - `args`: any pytree (arrays, an `eqx.Module`) passed to the vector field; traced.
    - `step_size`, `max_step_size`, `min_step_size`: arclength steps (defaults `|p1 - p0|` over
        50, 10 and 1e8).
    - `max_steps`: maximum number of continuation steps (accepted or rejected); the buffers
        have `max_steps + 1` rows.
    - `detect_bifurcations`: detect, localise and classify bifurcations.
    - `max_bifurcations`: number of event slots (`branch.events.num_detected` counts all).
    - `rtol`, `atol`, `newton_max_steps`: corrector settings (default tolerance `eps^(2/3)`).
    - `parameter_tol`: localisation tolerance (default `1e-10` in float64).
    - `symmetry_tol`: relative size of `b2` below which a branch point is a pitchfork.

    **Returns:**

    A `Branch`: `branch.result` (and `branch.status`) says how it ended, `branch.bifurcations`
    lists what was found (eagerly; `branch.events` holds the padded arrays).
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"`x0` must have shape (N,), got {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    dtype = x0.dtype
    for name, p in (("p0", p0), ("p1", p1)):
        if jnp.ndim(p) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(p)}")
    if int(max_steps) < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps}")
    s0 = error_if_nonfinite(jnp.asarray(p0, dtype), "p0")
    s1 = error_if_nonfinite(jnp.asarray(p1, dtype), "p1")
    s1 = error_if_not(s1, s0 != s1, "`p0` and `p1` must differ")
    x0 = error_if_nonfinite(x0, "x0")
    family = ScalarFamily(vector_field, args is not None)
    check_vector_field(lambda x, mu: family(x, mu, args), x0, s0)
    problem = ContinuationProblem(
        family, args, make_options(dtype, rtol, atol, newton_max_steps, parameter_tol, symmetry_tol)
    )
    span = jnp.abs(s1 - s0)
    as_h = lambda v, default: default if v is None else jnp.asarray(v, dtype)
    # The default start, spelled out so that `switch_branch` (which passes its own) shares the
    # compiled program: the solve at fixed `p0` from `x0`, oriented towards `p1`.
    start = default_start(x0, s0, s1)
    return continue_family(
        problem,
        x0,
        s0,
        s1,
        as_h(step_size, span / 50),
        as_h(max_step_size, span / 10),
        as_h(min_step_size, 1e-8 * span),
        int(max_steps),
        bool(detect_bifurcations),
        int(max_bifurcations),
        start,
    )
