"""Cost of the sNTK operators relative to one forward solve.

Prints, for CTRNNs of several sizes, the median wall time (over `--repeats` runs, after
compilation) of: the forward solve, J v (one tangent solve), Jᵀ v (one adjoint solve), Θ v, and
Θ V for a block of vectors (per vector), each as a ratio to the forward solve measured in the
same run. Also the first-call (compile) time of Θ v.

    python benchmarks/operators.py            # N in {32, 128}, B = 8, T = 50, float64
    python benchmarks/operators.py --quick    # tiny sizes, for a smoke run
"""

from __future__ import annotations

import argparse

import jax
from _timing import first_call, median_time  # noqa: E402  (benchmarks/_timing.py)

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import diffrax_sntk as ds  # noqa: E402


def run(n, batch, times, block, repeats, key):
    kmodel, ky0, kin, kv = jr.split(key, 4)
    model = ds.CTRNN(n, key=kmodel, gain=0.9)
    ts = jnp.linspace(0.2, 10.0, times)
    problem = ds.TrajectoryProblem(ts, jr.normal(ky0, (batch, n)), rtol=1e-6, atol=1e-8)
    v = jr.normal(kv, (batch, times, n))
    vs = jr.normal(kv, (block, batch, times, n))
    params = eqx.filter(model, eqx.is_inexact_array)

    fwd = eqx.filter_jit(lambda m: ds.simulate(m, problem))
    jv = eqx.filter_jit(lambda m, p: ds.jacobian_operator(m, problem).mv(p))
    jtv = eqx.filter_jit(lambda m, x: ds.jacobian_operator(m, problem).transpose().mv(x))
    thv = eqx.filter_jit(lambda m, x: ds.sntk_operator(m, problem).mv(x))
    thV = eqx.filter_jit(lambda m, x: jax.vmap(ds.sntk_operator(m, problem).mv)(x))

    compile_fwd = first_call(fwd, model)
    first_call(jv, model, params)
    first_call(jtv, model, v)
    compile_theta = first_call(thv, model, v)
    first_call(thV, model, vs)
    t_fwd = median_time(fwd, model, repeats=repeats)
    t_jv = median_time(jv, model, params, repeats=repeats)
    t_jtv = median_time(jtv, model, v, repeats=repeats)
    t_thv = median_time(thv, model, v, repeats=repeats)
    t_thV = median_time(thV, model, vs, repeats=repeats)
    return dict(
        n=n, batch=batch, times=times, fwd_ms=1e3 * t_fwd,
        jv=t_jv / t_fwd, jtv=t_jtv / t_fwd, thv=t_thv / t_fwd, block=t_thV / block / t_fwd,
        compile_fwd=compile_fwd, compile_theta=compile_theta,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--block", type=int, default=8)
    args = parser.parse_args()
    sizes = [(8, 2, 10)] if args.quick else [(32, 8, 50), (128, 8, 50)]
    print(f"{jax.devices()[0].platform} backend, float64, medians of {args.repeats} runs; "
          "ratios are to one forward solve in the same run")
    header = (f"{'N':>5} {'B':>3} {'T':>4} {'fwd ms':>9} {'Jv':>6} {'JTv':>6} {'Θv':>6} "
              f"{'ΘV/vec':>7} {'compile fwd s':>14} {'compile Θv s':>13}")
    print(header)
    for n, b, t in sizes:
        r = run(n, b, t, args.block, args.repeats, jr.PRNGKey(0))
        print(f"{r['n']:>5} {r['batch']:>3} {r['times']:>4} {r['fwd_ms']:>9.2f} {r['jv']:>6.2f} "
              f"{r['jtv']:>6.2f} {r['thv']:>6.2f} {r['block']:>7.2f} {r['compile_fwd']:>14.1f} "
              f"{r['compile_theta']:>13.1f}")


if __name__ == "__main__":
    main()
