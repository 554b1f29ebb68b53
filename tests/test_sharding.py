"""Trials sharded over devices.

Several CPU devices exist only if `XLA_FLAGS=--xla_force_host_platform_device_count=4` is set
before jax is imported, which this pytest process has already done; so the sharded run happens
in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

_SCRIPT = textwrap.dedent(
    """
    import diffrax as dfx
    import jax
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import diffrax_sntk as ds

    assert jax.config.jax_enable_x64 and jax.device_count() == 4, jax.devices()
    N, M, B, T = 3, 2, 4, 5
    model = ds.CTRNN(N, input_size=M, key=jr.PRNGKey(0), gain=1.2)
    ts = jnp.linspace(0.5, 2.5, T)
    its = jnp.linspace(0.0, 2.5, 6)
    problem = ds.TrajectoryProblem(
        ts, jr.normal(jr.PRNGKey(1), (B, N)), jr.normal(jr.PRNGKey(2), (B, 6, M)),
        input_ts=its, solver=dfx.Heun(), stepsize_controller=dfx.ConstantStepSize(), dt0=0.05,
    )  # fixed steps compile faster than the adaptive default; the sharding is the same
    v = jr.normal(jr.PRNGKey(3), (B, T, N))

    theta_mv = eqx.filter_jit(lambda m, p, x: ds.sntk_operator(m, p).mv(x))
    ref = theta_mv(model, problem, v)

    # `jax.make_mesh` gives Explicit axes, which `shard_trials` turns into Auto ones.
    sharded = ds.shard_trials(problem, jax.make_mesh((4,), ("trials",)))
    assert ds.shard_trials(problem, jax.devices()).y0.sharding == sharded.y0.sharding
    assert len(sharded.y0.sharding.device_set) == 4
    assert sharded.y0.addressable_shards[0].data.shape == (1, N)
    assert sharded.inputs.addressable_shards[0].data.shape == (1, 6, M)
    vs = jax.device_put(v, sharded.y0.sharding)
    out = theta_mv(model, sharded, vs)
    # Really split over the 4 devices, one trial each: not gathered onto one device.
    assert len(out.sharding.device_set) == 4, out.sharding
    assert not out.sharding.is_fully_replicated, out.sharding
    assert {s.data.shape for s in out.addressable_shards} == {(1, T, N)}, out.sharding
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert err < 1e-12, err

    # The replay path (built outside jit) stores its linearisation sharded the same way.
    op = ds.sntk_operator(model, sharded, method="replay")
    out2 = eqx.filter_jit(lambda o, x: o.mv(x))(op, vs)
    assert len(out2.sharding.device_set) == 4 and not out2.sharding.is_fully_replicated
    err2 = float(jnp.max(jnp.abs(out2 - ref)) / jnp.max(jnp.abs(ref)))
    assert err2 < 1e-12, err2

    for bad in (jax.devices()[:3], "cpu"):
        try:
            ds.shard_trials(problem, bad)
        except ValueError as e:
            assert "`mesh_or_devices`" in str(e) or "`problem`" in str(e), e
        else:
            raise AssertionError(f"no ValueError for {bad!r}")
    print("SHARDING-OK", err)
    """
)


def test_sharded_theta_matches_unsharded():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_ENABLE_X64"] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "SHARDING-OK" in proc.stdout


def test_shard_trials_static_misuse():
    problem = ds.TrajectoryProblem(jnp.linspace(0.5, 1.0, 2), jr.normal(jr.PRNGKey(0), (2, 2)))
    with pytest.raises(ValueError, match="`problem`"):
        ds.shard_trials(problem.y0)
    with pytest.raises(ValueError, match="`mesh_or_devices`"):
        ds.shard_trials(problem, [])
    with pytest.raises(ValueError, match="`axis_name"):
        ds.shard_trials(problem, jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)))
    # A single device always divides the batch: the problem comes back unchanged in value.
    out = ds.shard_trials(problem)
    assert jnp.array_equal(out.y0, problem.y0)

