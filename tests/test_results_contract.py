"""Every public result type carries a `ds.RESULTS` code and round-trips through `jax.jit` and
`jax.vmap`: a batched call's members equal the single calls (codes and a numeric field).

The bifurcation channels' own jit/vmap contract is in tests/test_channels.py
(`test_vmap_over_parameters_and_points`), on the compiled programs that file already builds."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import diffrax_sntk as ds


def _pitchfork(x, mu):
    return mu * x - x**3


def _fixed_points(mu):
    return ds.find_fixed_points(_pitchfork, mu, jnp.array([[0.3], [-2.0], [1e-3]]))


def _continuation(a):
    return ds.continuation(lambda x, mu, b: mu * x - x**3 + b, jnp.zeros(1), -0.5, 0.5, args=a,
                           max_steps=64)


def _normal_form(mu):
    return ds.normal_form_coefficients(lambda x, p: p * x - x**3, jnp.zeros(1), mu,
                                       kind="branch_point")


def _landscape(c):
    s = jnp.linspace(-1.0, 1.0, 21)
    return ds.fit_normal_form_landscape(s, c * s**4 / 4 - 0.5 * s**2 / 2 + 0.1 * s)


def _psd(scale):
    q = jnp.linalg.qr(jr.normal(jr.PRNGKey(0), (12, 12)))[0]
    a = (q * (scale * 2.0 ** -jnp.arange(12))) @ q.T
    return lx.MatrixLinearOperator(a, (lx.symmetric_tag, lx.positive_semidefinite_tag))


def _eigenpairs(scale):
    return ds.top_eigenpairs(_psd(scale), 3, key=jr.PRNGKey(1))


def _estimate(scale):
    return ds.trace(_psd(scale), key=jr.PRNGKey(1), num_matvecs=6)


def _natgrad_state(scale):
    params = {"w": jnp.ones(12)}
    opt = ds.low_rank_natural_gradient(0.1, rank=2, refresh_every=1)
    state = opt.init(params)
    jac = lx.MatrixLinearOperator(_psd(scale).as_matrix()[:8])
    jac = lx.FunctionLinearOperator(lambda p: jac.mv(p["w"]), jax.eval_shape(lambda: params))
    _, state = opt.update({"w": jnp.ones(12)}, state, params, jacobian=jac)
    return state


CASES = {
    # name: (builder, batch of inputs, a numeric field to compare)
    "FixedPoints": (_fixed_points, jnp.array([-0.5, 0.5]), lambda r: r.states),
    "Branch": (_continuation, jnp.array([0.0, 0.05]), lambda r: r.length),
    "BranchPointNormalForm": (_normal_form, jnp.array([0.0, 1e-3]), lambda r: r.b3),
    "RestrictedLandscape": (_landscape, jnp.array([1.0, 2.0]), lambda r: r.r_squared),
    "Eigenpairs": (_eigenpairs, jnp.array([1.0, 2.0]), lambda r: r.values),
    "Estimate": (_estimate, jnp.array([1.0, 2.0]), lambda r: r.estimate),
    "LowRankNaturalGradientState": (_natgrad_state, jnp.array([1.0, 2.0]),
                                    lambda r: r.num_refresh_failures),
}


def _codes(result):
    return np.asarray(result._value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_result_type_contract(name):
    build, batch, field = CASES[name]
    single = [eqx.filter_jit(build)(x) for x in batch]
    assert type(single[0]).__name__ == name
    assert isinstance(single[0].result, ds.RESULTS)
    batched = eqx.filter_jit(eqx.filter_vmap(build))(batch)
    assert isinstance(batched.result, ds.RESULTS)
    codes = _codes(batched.result)
    assert codes.shape[0] == len(batch)
    for i, one in enumerate(single):
        np.testing.assert_array_equal(codes[i], _codes(one.result))
        np.testing.assert_allclose(np.asarray(field(batched))[i], np.asarray(field(one)),
                                   rtol=1e-9, atol=1e-12)
    # The message is readable.
    assert isinstance(ds.RESULTS[jax.tree_util.tree_map(lambda a: a, single[0].result)], str) \
        or single[0].result._value.ndim > 0


def test_results_extends_optimistix_and_lineax():
    import optimistix as optx

    assert ds.RESULTS.promote(lx.RESULTS.singular) == ds.RESULTS.singular
    assert ds.RESULTS.promote(optx.RESULTS.nonlinear_max_steps_reached) == \
        ds.RESULTS.nonlinear_max_steps_reached
    assert ds.RESULTS[ds.RESULTS.successful] == ""


def test_eagerly_built_results_pass_through_jit_and_vmap():
    # `track_bifurcations` assembles its bifurcations on the host (it is not jittable); its result
    # and each `Bifurcation` are still pytrees with a RESULTS code that jit and vmap carry.
    tracks = [ds.track_bifurcations(_pitchfork, jnp.linspace(-0.5, 0.5, 5) + s, jnp.zeros((1, 1)))
              for s in (0.0, 0.05)]
    for obj in (tracks[0], tracks[0].bifurcations[0]):
        again = eqx.filter_jit(lambda o: o)(obj)
        assert isinstance(again.result, ds.RESULTS) and again.result == ds.RESULTS.successful
        assert type(again) is type(obj)
    # A `Bifurcation`'s kind and index are static, so stack the tracks' array parts only.
    arrays = [eqx.tree_at(lambda t: t.bifurcations, t, ()) for t in tracks]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *arrays)
    codes = eqx.filter_vmap(lambda t: t.result)(stacked)
    np.testing.assert_array_equal(_codes(codes), [_codes(t.result) for t in tracks])


# Parts of a result (its groups, events and records) and non-result types: no code of their own.
_NOT_RESULTS = {"AbstractNormalForm", "CTRNN", "ChannelDiagnostics", "ChannelSplit",
                "CriticalMode", "CycleTrackEvent", "Deflation", "Ghosts", "PairedLinearOperator",
                "Spectrum", "TrajectoryProblem", "VectorField"}


def test_every_public_result_type_has_a_result_field():
    # Structural (no compile): every exported module or named tuple that is a result carries a
    # `result` field, including the types added after the contract above was written.
    import dataclasses

    seen = []
    for name in dir(ds):
        obj = getattr(ds, name)
        if not isinstance(obj, type) or name in _NOT_RESULTS:
            continue
        if issubclass(obj, eqx.Module):
            fields = [f.name for f in dataclasses.fields(obj)]
        elif issubclass(obj, tuple) and hasattr(obj, "_fields"):
            fields = list(obj._fields)
        else:
            continue
        seen.append(name)
        assert "result" in fields, name
    assert {"PeriodicOrbit", "CycleBranch", "BifurcationDiagram", "FixedPointAnalysis",
            "SNTKCheckpoints", "FixedPoints", "Branch"} <= set(seen)
