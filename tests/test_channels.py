"""Bifurcation-channel / residual split of the sNTK, and the restricted landscape.

Compile budget: one problem shape per model family; μ and the point are data (jit arguments), so
the scalar cases (float64) share one compiled program, and the three CTRNN distances another. The
split's algebra is checked densely from J materialised by forward-mode solves.
"""

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import raises_check, small_problem

MUS = (-0.5, -0.2, -0.05)


# --------------------------------------------------------------------------------------------
# dx/dt = μx − x³ + b at x0 = x* = 0


def _pitchfork(t, x, a):
    return a["mu"] * x - x**3 + a["b"]


def _scalar_model(mu, dtype=jnp.float64):
    return ds.VectorField(_pitchfork, {"mu": jnp.asarray(mu, dtype), "b": jnp.asarray(0.0, dtype)})


def _scalar_problem(dtype=jnp.float64):
    return ds.TrajectoryProblem(jnp.linspace(0.5, 10.0, 8, dtype=dtype), jnp.zeros((1, 1), dtype))


_SCALAR_PROBLEM = _scalar_problem()


@eqx.filter_jit
def _scalar_run(model, x):
    return ds.bifurcation_channels(model, _SCALAR_PROBLEM, x)


@pytest.fixture(scope="module")
def scalar_case():
    return _SCALAR_PROBLEM, _scalar_run(_scalar_model(-0.5), jnp.zeros(1))


def test_scalar_channel_is_everything(scalar_case):
    problem, split = scalar_case
    mu = -0.5
    # Parameters (μ, b): g_f = (x*, 1) = (0, 1), g_λ = (1, 0); Θ is rank one (∂x/∂μ = 0 on x ≡ 0).
    assert int(split.rank) == 2
    assert abs(float(split.energy_fraction) - 1) < 1e-12
    vals = np.asarray(split.channel_eigenvalues)
    assert vals[1] <= 1e-12 * vals[0]
    assert abs(float(split.effective_rank) - 1) < 1e-10
    assert abs(complex(split.critical_eigenvalue) - mu) < 1e-12
    np.testing.assert_allclose(np.asarray(split.forcing_direction.args["b"]), [1.0, 0.0])
    np.testing.assert_allclose(np.asarray(split.eigenvalue_direction.args["mu"]), [1.0, 0.0])
    # Profile of the forcing direction: (1 − e^{μt})/|μ| along v.
    ts = np.asarray(problem.ts)
    expected = (1 - np.exp(mu * ts)) / abs(mu)
    sign = np.sign(np.asarray(split.right_eigenvector.real)[0])
    got = np.asarray(split.profile_computed)[0, :, 0] * sign
    assert np.max(np.abs(got - expected)) < 1e-6
    assert float(split.profile_error) < 1e-6
    assert np.max(np.abs(np.asarray(split.profile_predicted)[0, :, 0] - got)) < 1e-6
    assert split.warnings == ()
    assert np.isinf(float(split.amplification))  # Θ_res = 0


def test_scalar_float32_smoke():
    problem = _scalar_problem(jnp.float32)
    split = eqx.filter_jit(
        lambda m: ds.bifurcation_channels(m, problem, jnp.zeros(1, jnp.float32))
    )(_scalar_model(-0.5, jnp.float32))
    assert split.energy_fraction.dtype == jnp.float32
    assert split.result == ds.RESULTS.successful
    assert abs(float(split.energy_fraction) - 1) < 1e-4
    assert float(split.profile_error) < 1e-3
    assert split.warnings == ()


def test_result_groups_aliases_and_jit(scalar_case):
    _, split = scalar_case
    assert split.result == ds.RESULTS.successful and bool(split.successful)
    assert isinstance(split.split, ds._channels.ChannelSplit)
    # Every old flat field reads the same through its group.
    assert split.energy_fraction is split.split.energy_fraction
    assert split.restricted is split.split.restricted
    assert split.critical_eigenvalue is split.mode.eigenvalue
    assert split.effective_rank is split.diagnostics.effective_rank
    assert split.dominant_overlap is split.diagnostics.dominant_overlap
    np.testing.assert_allclose(float(split.split.channel_trace / split.split.trace),
                               float(split.energy_fraction))
    assert not bool(split.mode.is_complex)
    # The result passes through jit as a pytree (operators included).
    again = eqx.filter_jit(lambda s: s)(split)
    assert again.result == ds.RESULTS.successful
    np.testing.assert_array_equal(np.asarray(again.top_eigenvector),
                                  np.asarray(split.top_eigenvector))


def test_vmap_over_parameters_and_points(scalar_case):
    # A μ sweep with one point per member; the second point is not an equilibrium of its
    # model, so the batch carries one successful and one no_fixed_point result.
    mus, xs = jnp.array([-0.5, -0.2]), jnp.array([[0.0], [0.3]])
    models = ds.VectorField(_pitchfork, {"mu": mus, "b": jnp.zeros(2)})
    batched = eqx.filter_jit(eqx.filter_vmap(
        lambda m, x: ds.bifurcation_channels(m, _SCALAR_PROBLEM, x)
    ))(models, xs)
    assert batched.energy_fraction.shape == (2,)
    np.testing.assert_array_equal(
        np.asarray(batched.result._value),
        [ds.RESULTS.successful._value, ds.RESULTS.no_fixed_point._value],
    )
    for i in range(2):
        one = _scalar_run(_scalar_model(float(mus[i])), xs[i])
        for name in ("energy_fraction", "top_eigenvalue", "effective_rank", "profile_error",
                     "critical_eigenvalue", "fixed_point_residual"):
            np.testing.assert_allclose(np.asarray(getattr(batched, name)[i]),
                                       np.asarray(getattr(one, name)), rtol=1e-10, atol=1e-12)
        assert bool(batched.successful[i]) == bool(one.successful)


def test_fixed_points_without_convergence_is_a_result(scalar_case):
    model = _scalar_model(-0.5)
    # x² + 1 has no real root: nothing converges.
    fps = ds.find_fixed_points(lambda x, p: x**2 + p, 1.0, jnp.array([[0.5], [2.0]]),
                               max_steps=4)
    assert not bool(jnp.any(fps.converged))
    # Shift the channels' field so that entry 0 *is* its equilibrium (‖f‖ = 0): only the
    # all-false `converged` can fail it, instead of entry 0 being used silently.
    shift = fps.states[0]
    field = lambda x, m: m(0.0, x - shift, None)
    run = eqx.filter_jit(lambda m, c, throw: ds.bifurcation_channels(
        m, _SCALAR_PROBLEM, c, vector_field=field, throw=throw))
    with raises_check("No initial state converged"):
        jax.block_until_ready(run(model, fps, True).energy_fraction)


def test_nonfinite_point_fails_under_jit(scalar_case):
    with raises_check("`critical` contains non-finite"):
        jax.block_until_ready(_scalar_run(_scalar_model(-0.5), jnp.array([jnp.nan])).rank)


class _Func(eqx.Module):
    """The usual diffrax neural ODE: an MLP with a jitted activation (softplus)."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return -y + 0.5 * self.mlp(y)


def test_neural_ode_module_from_fixed_point():
    problem = small_problem(with_inputs=False)
    n = problem.state_size
    func = _Func(eqx.nn.MLP(n, n, 8, 1, activation=jax.nn.softplus, key=jr.PRNGKey(0)))

    @eqx.filter_jit
    def run(func, x0s):
        fps = ds.find_fixed_points(lambda x, f: f(0.0, x, None), func, x0s)
        return fps, ds.bifurcation_channels(func, problem, fps)

    fps, split = run(func, jr.normal(jr.PRNGKey(3), (2, n)))
    assert bool(jnp.any(fps.converged))
    assert split.result == ds.RESULTS.successful
    assert float(split.fixed_point_residual) < 1e-9
    # The mode is the model's own leading eigenpair at x*.
    x = split.state
    A = np.asarray(jax.jacfwd(lambda y: func(0.0, y, None))(x))
    lam = np.linalg.eigvals(A)
    assert abs(complex(split.critical_eigenvalue) - lam[np.argmax(lam.real)]) < 1e-10
    v, w = np.asarray(split.right_eigenvector), np.asarray(split.left_eigenvector)
    assert abs(w @ v - 1) < 1e-10
    # g_f = (∂f/∂θ)ᵀ w, in the MLP's own parameter structure.
    params, static = eqx.partition(func, eqx.is_inexact_array)
    _, pull = jax.vjp(lambda p: eqx.combine(p, static)(0.0, x, None), params)
    expected = jfu.ravel_pytree(pull(jnp.asarray(w.real))[0])[0]
    got = jfu.ravel_pytree(jtu.tree_map(lambda a: a[0], split.forcing_direction))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-12)
    assert 0 < float(split.energy_fraction) <= 1 + 1e-12
    assert float(split.top_eigenvalue) <= float(split.split.trace) * (1 + 1e-12)
    assert 1 <= float(split.effective_rank) <= problem.batch_size * problem.num_times * n
    assert jtu.tree_structure(split.dominant_direction) == jtu.tree_structure(params)


# --------------------------------------------------------------------------------------------
# CTRNN dx/dt = −x + (1+μ) S tanh x + b, S symmetric with top eigenvalue 1.

N = 4
S_SPECTRUM = jnp.array([1.0, 0.4, -0.2, -0.6])


def _ctrnn(mu):
    q, _ = jnp.linalg.qr(jr.normal(jr.PRNGKey(3), (N, N)))
    S = q @ jnp.diag(S_SPECTRUM) @ q.T
    b = 0.002 * jr.normal(jr.PRNGKey(4), (N,))
    base = ds.CTRNN(N, key=jr.PRNGKey(0))
    return eqx.tree_at(lambda m: (m.W, m.b), base, ((1 + mu) * S, b))


# Fixed steps compile faster than the adaptive default (same fractions to ~1e-12 here).
_ctrnn_problem = ds.TrajectoryProblem(
    jnp.linspace(2.0, 40.0, 8),
    0.5 * jr.normal(jr.PRNGKey(5), (2, N)),
    stepsize_controller=dfx.ConstantStepSize(),
    dt0=0.1,
    max_steps=1000,
)


@eqx.filter_jit
def _fixed_point(model):
    fps = ds.find_fixed_points(lambda x, m: m(0.0, x, None), model, jnp.zeros((1, N)))
    return fps.states[0], fps.converged[0]


@eqx.filter_jit
def _split_and_jacobian(model, x):
    # J rides along in the same program (sharing its forward solves) rather than compiling anew.
    split = ds.bifurcation_channels(model, _ctrnn_problem, x)
    return split, ds.jacobian_operator(model, _ctrnn_problem).as_matrix()


def _split(model, x):
    return _split_and_jacobian(model, x)[0]


@pytest.fixture(scope="module")
def ctrnn_case():
    out = []
    for mu in MUS:
        model = _ctrnn(mu)
        x, ok = _fixed_point(model)
        assert bool(ok)
        split, jm = _split_and_jacobian(model, x)
        out.append((model, x, split, jm))
    return out


def test_ctrnn_channel_grows_towards_bifurcation(ctrnn_case):
    fractions = [float(s.energy_fraction) for _, _, s, _ in ctrnn_case]
    alignments = [float(s.alignment) for _, _, s, _ in ctrnn_case]
    ranks = [float(s.effective_rank) for _, _, s, _ in ctrnn_case]
    amps = [float(s.amplification) for _, _, s, _ in ctrnn_case]
    lams = [complex(s.critical_eigenvalue).real for _, _, s, _ in ctrnn_case]
    print("fractions", fractions, "alignments", alignments, "PR", ranks, "amplification", amps,
          "lambda_c", lams)
    assert fractions[0] < fractions[1] < fractions[2]
    assert ranks[0] > ranks[1] > ranks[2]
    assert amps[0] < amps[1] < amps[2]
    last = ctrnn_case[-1][2]
    assert float(last.alignment) > 0.999
    assert float(last.subspace_alignment) > 0.999
    assert float(last.dominant_overlap) > 0.999
    assert int(last.rank) == 2
    assert last.warnings == ()
    # The leading eigenvalue tracks μ (x* ≈ 0 because b is small).
    for mu, lam in zip(MUS, lams, strict=True):
        assert abs(lam - mu) < 0.01


_as_matrix = eqx.filter_jit(lambda op: op.as_matrix())


def test_split_sums_to_theta(ctrnn_case):
    _, _, split, jm = ctrnn_case[-1]
    # Θ and Θ_res share one matvec (Θ with an empty basis): one compiled program for both.
    bif, res, full = (np.asarray(_as_matrix(op))
                      for op in (split.bifurcation, split.residual, split.sntk))
    theta = np.asarray(jm @ jm.T)
    scale = np.max(np.abs(theta))
    assert np.max(np.abs(bif + res - theta)) <= 1e-10 * scale
    assert np.max(np.abs(full - theta)) <= 1e-10 * scale
    for m in (bif, res):
        assert np.max(np.abs(m - m.T)) <= 1e-12 * scale
        assert np.min(np.linalg.eigvalsh(m)) >= -1e-10 * scale
    for op in (split.bifurcation, split.residual, split.sntk, split.restricted):
        assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    assert np.linalg.matrix_rank(bif, tol=1e-9 * scale) == 2
    # Diagnostics agree with the dense matrices.
    assert abs(np.trace(bif) / np.trace(theta) - float(split.energy_fraction)) < 1e-10
    top = np.linalg.eigvalsh(theta)[-1]
    assert abs(top - float(split.top_eigenvalue)) <= 1e-10 * top
    assert abs(np.linalg.eigvalsh(res)[-1] - float(split.residual_top_eigenvalue)) <= 1e-9 * top
    # The restricted sNTK (J u1)(J u1)ᵀ is the top rank-one piece of Θ.
    u1 = jfu.ravel_pytree(split.dominant_direction)[0]
    ju1 = np.asarray(jm @ u1)
    r1 = np.asarray(_as_matrix(split.restricted))
    assert np.max(np.abs(r1 - np.outer(ju1, ju1))) <= 1e-9 * scale
    # The basis is orthonormal.
    U = jax.vmap(lambda t: jfu.ravel_pytree(t)[0])(split.basis)
    assert np.max(np.abs(np.asarray(U @ U.T) - np.diag([1.0, 1.0, 0.0, 0.0]))) < 1e-12


def test_ctrnn_channel_is_rank_one_for_trials_at_rest():
    # For a real critical eigenvalue of a CTRNN both channel directions force a trial along the
    # left vector w (g_f: δW ∝ w φ(x*)ᵀ, δb ∝ w; ∇λ_c: δW ∝ w (φ′(x*) ∘ v)ᵀ), with scalar
    # profiles c_f(t), c_λ(t) set by the trial's state. Trials resting together at one state
    # have constant profiles with one ratio: the responses are proportional and Θ_bif is exactly
    # rank one, at the split point or anywhere else. Controls: trials resting at two different
    # equilibria, and moving trials, have a second channel eigenvalue of comparable size (rank
    # 2). Why the learned fold births measure rank 2: docs/fold_hopf_tasks.md, "fold-channel
    # probe". μ = 0.3: a saddle x₀ near the origin (λ_c = 0.3, real) between two attractors x±.
    model = _ctrnn(0.3)
    q, _ = jnp.linalg.qr(jr.normal(jr.PRNGKey(3), (N, N)))
    starts = jnp.stack([jnp.zeros(N), 2 * q[:, 0], -2 * q[:, 0]])
    fps = ds.find_fixed_points(lambda x, m: m(0.0, x, None), model, starts)
    assert bool(jnp.all(fps.converged))
    x0, xp, xm = fps.states
    assert float(jnp.linalg.norm(xp - xm)) > 1.0
    run = eqx.filter_jit(ds.bifurcation_channels)

    def ratio_and_rank(y0):
        split = run(model, eqx.tree_at(lambda p: p.y0, _ctrnn_problem, y0), x0)
        assert int(split.rank) == 2
        vals = np.asarray(split.channel_eigenvalues)
        return vals[1] / vals[0], int(split.channel_rank)

    for at_rest in ([x0, x0], [xp, xp]):
        ratio, rank = ratio_and_rank(jnp.stack(at_rest))
        assert rank == 1 and ratio < 1e-20
    for control in (jnp.stack([xp, xm]), _ctrnn_problem.y0):
        ratio, rank = ratio_and_rank(control)
        assert rank == 2 and ratio > 0.3


def test_bad_inputs_warn(ctrnn_case):
    model, x, _, _ = ctrnn_case[-1]
    # Not a fixed point: the split is still computed, with a warning.
    off = _split(model, x + 0.3)
    assert bool(off.residual_too_large) and off.result == ds.RESULTS.no_fixed_point
    assert any("not a fixed point" in w for w in off.warnings)
    assert np.isfinite(float(off.energy_fraction))
    # μ = −1: W = 0, A = −I, the leading eigenvalue is nowhere near the imaginary axis.
    far_model = _ctrnn(-1.0)
    far, _ = _fixed_point(far_model)
    split = _split(far_model, far)
    assert bool(split.far_from_critical) and not bool(split.residual_too_large)
    # Far from critical is a caveat on the interpretation, not a failure.
    assert split.result == ds.RESULTS.successful
    assert any("far from the imaginary axis" in w for w in split.warnings)


def test_plot_channel_collapse(ctrnn_case):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from diffrax_sntk.plotting import plot_channel_collapse

    ax, ax_rank = plot_channel_collapse([-mu for mu in MUS], [s for _, _, s, _ in ctrnn_case])
    assert len(ax.lines) == 1 and len(ax_rank.lines) == 1
    with pytest.raises(ValueError, match="distances"):
        plot_channel_collapse([0.1], [s for _, _, s, _ in ctrnn_case])


# --------------------------------------------------------------------------------------------
# Hopf normal form ż = (μ + iω) z − |z|² z + b with trained frequency ω.


def _hopf(t, x, a):
    z = x[0] + 1j * x[1]
    dz = (a["mu"] + 1j * a["omega"]) * z - jnp.abs(z) ** 2 * z
    return jnp.stack([dz.real, dz.imag]) + a["b"]


_HOPF_PROBLEM = ds.TrajectoryProblem(jnp.linspace(0.5, 10.0, 8), jnp.array([[0.5, 0.0]]))


@eqx.filter_jit
def _hopf_run(model, spec):
    # One compilation per (vector field, filter_spec): μ is data.
    return ds.bifurcation_channels(model, _HOPF_PROBLEM, jnp.zeros(2), filter_spec=spec)


def test_hopf_channel_is_rank_two():
    model = ds.VectorField(
        _hopf, {"mu": jnp.array(-0.1), "omega": jnp.array(1.0), "b": jnp.zeros(2)}
    )
    split = _hopf_run(model, eqx.is_inexact_array)
    lam = complex(split.critical_eigenvalue)
    assert abs(lam - (-0.1 + 1j)) < 1e-12
    assert int(split.rank) == 2
    # ∇ Re λ and ∇ Im λ: the pair of equal-norm orthogonal directions (μ and ω).
    g = split.eigenvalue_direction.args
    np.testing.assert_allclose(np.asarray(g["mu"]), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.asarray(g["omega"]), [0.0, 1.0], atol=1e-12)
    vals = np.asarray(split.channel_eigenvalues)
    assert vals[1] > 1e-2 * vals[0] and vals[2] <= 1e-12 * vals[0]
    assert split.warnings == ()


def _hopf_slow_frequency(t, x, a):
    # The same field with ω = 0.1·ω': Im λ still moves with the parameter, at a tenth of the rate.
    return _hopf(t, x, {**a, "omega": 0.1 * a["omega"]})


def test_hopf_channel_numerical_rank():
    # At the Hopf point (μ = 0): trained frequency → rank 2; frequency fixed (not a parameter)
    # → rank 1; negative control: a frequency parameter that moves Im λ ten times more slowly
    # spans a second basis direction (`rank` 2) whose response is 100× smaller in Θ_bif, so
    # the numerical rank is 1.
    problem = _HOPF_PROBLEM
    args = {"mu": jnp.array(0.0), "omega": jnp.array(1.0), "b": jnp.zeros(2)}
    trained = ds.VectorField(_hopf, args)
    fixed_spec = ds.VectorField(_hopf, {"mu": True, "omega": False, "b": True})
    slow = ds.VectorField(_hopf_slow_frequency, {**args, "omega": jnp.array(10.0)})
    run = _hopf_run
    s_trained = run(trained, eqx.is_inexact_array)
    s_fixed = run(trained, fixed_spec)
    s_slow = run(slow, eqx.is_inexact_array)
    assert s_trained.channel_rank_tol == 0.1
    assert (int(s_trained.rank), int(s_trained.channel_rank)) == (2, 2)
    # dz/dμ and dz/dω are orthogonal and of equal norm in the linear regime; along this
    # trajectory (r decays from 0.5 at μ = 0) the ratio of the channel eigenvalues is 0.38.
    vals = np.asarray(s_trained.channel_eigenvalues)
    assert 0.3 < vals[1] / vals[0] < 0.5
    assert (int(s_fixed.rank), int(s_fixed.channel_rank)) == (1, 1)
    assert (int(s_slow.rank), int(s_slow.channel_rank)) == (2, 1)
    # The slow direction is there, a hundredth of the leading one: a threshold below that would
    # count it.
    vals = np.asarray(s_slow.channel_eigenvalues)
    assert 5e-3 < vals[1] / vals[0] < 5e-2
    with pytest.raises(ValueError, match="channel_rank_tol"):
        ds.bifurcation_channels(slow, problem, jnp.zeros(2), channel_rank_tol=1.5)


# --------------------------------------------------------------------------------------------
# Restricted landscape


@pytest.mark.parametrize("form", ["pitchfork", "fold", "transcritical", "hopf"])
def test_landscape_fit_recovers_normal_form(form):
    mu, s0, a, beta = 0.3, 0.2, 1.5, 2.0
    V = {
        "pitchfork": lambda x: -mu * x**2 / 2 + x**4 / 4,
        "hopf": lambda x: -mu * x**2 / 2 + x**4 / 4,  # amplitude potential, r = |x|
        "fold": lambda x: -mu * x + x**3 / 3,
        "transcritical": lambda x: -mu * x**2 / 2 + x**3 / 3,
    }[form]
    model = {"theta": jnp.array([0.0, 0.0])}
    direction = {"theta": jnp.array([0.6, 0.8])}
    loss_fn = lambda m: a + beta * V(m["theta"] @ jnp.array([0.6, 0.8]) - s0)
    s = jnp.linspace(-1.0, 1.0, 21)
    land = ds.restricted_landscape(loss_fn, model, direction, s, normal_form=form)
    assert float(land.r_squared) > 1 - 1e-12
    if form == "transcritical" and abs(float(land.centre) - (s0 + mu)) < 1e-9:
        # Not identifiable: −μx²/2 + x³/3 with x = y + μ is μy²/2 + y³/3 − μ³/6, an exact fit
        # centred at s0 + μ with unfolding −μ; which centre wins is rounding.
        s0, mu, a = s0 + mu, -mu, a - beta * mu**3 / 6
    assert abs(float(land.centre) - s0) < 1e-9
    assert abs(float(land.unfolding) - mu) < 1e-8
    assert abs(float(land.scale) - beta) < 1e-8
    assert abs(float(land.offset) - a) < 1e-8
    # An even quartic and a cubic are told apart. (Fold and transcritical landscapes are both
    # cubics, centred at the inflection point or at a critical point: R² cannot separate them.)
    other = "fold" if form in ("pitchfork", "hopf") else "pitchfork"
    assert float(ds.fit_normal_form_landscape(s, land.loss, other).r_squared) < 0.999


def test_landscape_result_float32_and_vmap():
    s = jnp.linspace(-1.0, 1.0, 11, dtype=jnp.float32)
    quartic = 1.0 + 2.0 * (-0.3 * s**2 / 2 + s**4 / 4)
    land = ds.fit_normal_form_landscape(s, quartic, "pitchfork", num_centres=21)
    assert land.r_squared.dtype == jnp.float32
    assert land.result == ds.RESULTS.successful and bool(land.successful)
    assert abs(float(land.unfolding) - 0.3) < 1e-3 and float(land.r_squared) > 1 - 1e-4
    # Failures are results, with the undefined values NaN (not R² = 1, not μ = c/tiny).
    bad = ds.fit_normal_form_landscape(s, quartic.at[3].set(jnp.nan), num_centres=21)
    assert bad.result == ds.RESULTS.nonfinite
    flat = ds.fit_normal_form_landscape(s, jnp.ones_like(s), num_centres=21)
    assert flat.result == ds.RESULTS.nonfinite and np.isnan(float(flat.r_squared))
    with raises_check("Nonfinite"):
        jax.block_until_ready(
            ds.fit_normal_form_landscape(s, jnp.ones_like(s), num_centres=21, throw=True).scale
        )
    with raises_check("`s_values` contains non-finite"):
        jax.block_until_ready(
            ds.fit_normal_form_landscape(s.at[0].set(jnp.inf), quartic, num_centres=21).scale
        )
    # Jittable and vmappable over landscapes; each member equals its own fit.
    losses = jnp.stack([quartic, quartic.at[3].set(jnp.nan)])
    batched = eqx.filter_jit(eqx.filter_vmap(
        lambda y: ds.fit_normal_form_landscape(s, y, num_centres=21)
    ))(losses)
    np.testing.assert_array_equal(np.asarray(batched.successful), [True, False])
    np.testing.assert_allclose(float(batched.unfolding[0]), float(land.unfolding), rtol=1e-5)


def test_validation(scalar_case):
    problem, _ = scalar_case
    model = _scalar_model(-0.5)
    with pytest.raises(ValueError, match="`directions`"):
        ds.bifurcation_channels(model, problem, jnp.zeros(1), directions="all")
    with pytest.raises(ValueError, match="`method`"):
        ds.bifurcation_channels(model, problem, jnp.zeros(1), method="lanczos")
    with pytest.raises(ValueError, match="`critical`"):
        ds.bifurcation_channels(model, problem, jnp.zeros(3))
    with pytest.raises(TypeError, match="`critical`"):
        ds.bifurcation_channels(model, problem, "origin")
    with pytest.raises(ValueError, match="`normal_form`"):
        ds.fit_normal_form_landscape(jnp.arange(5.0), jnp.arange(5.0), "cusp")
    with pytest.raises(ValueError, match="`direction`"):
        ds.restricted_landscape(lambda m: 0.0, {"a": jnp.zeros(2)}, {"a": jnp.zeros(3)},
                                jnp.arange(5.0))


# --------------------------------------------------------------------------------------------
# Slow: the matrix-free path, Bifurcation input, an ODE landscape.


@pytest.mark.slow
def test_matfree_matches_dense(ctrnn_case):
    model, x, dense, _ = ctrnn_case[-1]
    mf = eqx.filter_jit(
        lambda m, xx: ds.bifurcation_channels(m, _ctrnn_problem, xx, method="matfree")
    )(model, x)
    assert mf.result == ds.RESULTS.successful and bool(mf.diagnostics.eigensolver_converged)
    assert abs(float(mf.energy_fraction) - float(dense.energy_fraction)) < 1e-6
    assert abs(float(mf.top_eigenvalue) - float(dense.top_eigenvalue)) < 1e-6 * float(
        dense.top_eigenvalue
    )
    assert abs(float(mf.alignment) - float(dense.alignment)) < 1e-6
    assert abs(float(mf.amplification) - float(dense.amplification)) < 1e-4 * float(
        dense.amplification
    )


@pytest.mark.slow
def test_bifurcation_input_and_ode_landscape():
    branch = ds.continuation(lambda x, mu: mu * x - x**3, jnp.zeros(1), -0.5, 0.5)
    (bif,) = [b for b in branch.bifurcations if b.kind == "pitchfork"]
    problem = _scalar_problem()
    model = _scalar_model(-0.2)
    split = ds.bifurcation_channels(model, problem, bif)  # eager: J by replay
    assert split.result == ds.RESULTS.successful
    assert abs(complex(split.critical_eigenvalue) + 0.2) < 1e-10
    assert abs(float(split.energy_fraction) - 1) < 1e-10
    target = jnp.full((1, 8, 1), 0.3)
    loss_fn = lambda m: jnp.mean((ds.simulate(m, problem) - target) ** 2)
    land = ds.restricted_landscape(
        loss_fn, model, split.dominant_direction, jnp.linspace(-0.5, 0.5, 11)
    )
    assert np.isfinite(float(land.r_squared)) and float(land.r_squared) > 0.9
