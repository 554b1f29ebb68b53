"""Small problems in float32: a vmapped block of Θv against the forward solve, piece by piece
(issue 19, item 4).

CTRNN N = 64, B = 8, T = 50, float32, the default `TrajectoryProblem` (Tsit5, the default PID
controller and tolerances). In one process, medians over `--repeats` interleaved rounds (every
round times each row once, so load from other processes hits the rows alike), after
compilation:

- `forward`: `ds.simulate` (what a training step's loss costs);
- for each matvec method (`replay`: the operator built once outside `jit`, matvecs are linear
  passes over the recorded steps; `solve`: fresh diffeqsolves):
  - `J v`, `Jᵀ r`, `Θ v` on single vectors;
  - the same on a vmapped block of `--block` vectors, per vector.

Each as a ratio to the forward solve. The goal of the issue: a block of 16 Θv at most 1.5× the
forward solve per vector. The J v and Jᵀ r rows split Θv into its two passes, so the table shows
which one dominates.

    python benchmarks/small_block.py [--hidden 64] [--batch 8] [--times 50] [--block 16]
"""

import argparse
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--times", type=int, default=50)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--x64", action="store_true", help="float64 instead of float32")
    args = parser.parse_args()

    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import diffrax_sntk as ds

    n, b, t, k = args.hidden, args.batch, args.times, args.block
    kmodel, ky0, kv, kp = jr.split(jr.PRNGKey(0), 4)
    model = ds.CTRNN(n, key=kmodel, gain=0.9)
    problem = ds.TrajectoryProblem(jnp.linspace(0.2, 10.0, t), jr.normal(ky0, (b, n)))
    params = eqx.filter(model, eqx.is_inexact_array)
    v = jr.normal(kv, (b, t, n))
    vs = jr.normal(kv, (k, b, t, n))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dp = unravel(jr.normal(kp, flat.shape, flat.dtype))
    dps = jax.vmap(lambda key: unravel(jr.normal(key, flat.shape, flat.dtype)))(
        jr.split(kp, k))

    rows = {"forward": (eqx.filter_jit(lambda m: ds.simulate(m, problem)), (model,), 1)}
    for method in ("replay", "solve"):
        if method == "replay":
            J = ds.jacobian_operator(model, problem, method="replay")
            theta = ds.sntk_operator(model, problem, method="replay")
            ops = (J, theta)
            make = lambda ops: ops
        else:
            ops = (model,)
            make = lambda ops: (ds.jacobian_operator(ops[0], problem, method="solve"),
                                ds.sntk_operator(ops[0], problem, method="solve"))

        def jv(ops, x, make=make):
            return make(ops)[0].mv(x)

        def jtr(ops, r, make=make):
            return make(ops)[0].transpose().mv(r)

        def thv(ops, x, make=make):
            return make(ops)[1].mv(x)

        for name, fn, single, block in (("J v", jv, dp, dps), ("Jᵀ r", jtr, v, vs),
                                        ("Θ v", thv, v, vs)):
            rows[f"{method} {name}"] = (eqx.filter_jit(fn), (ops, single), 1)
            rows[f"{method} {name} block"] = (
                eqx.filter_jit(lambda o, x, fn=fn: jax.vmap(lambda y: fn(o, y))(x)),
                (ops, block), k)

    compile_s = {}
    for name, (fn, a, _) in rows.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        compile_s[name] = time.perf_counter() - t0
    times = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (fn, a, _) in rows.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times[name].append(time.perf_counter() - t0)

    fwd = float(np.median(times["forward"]))
    dtype = "float64" if args.x64 else "float32"
    print(f"CTRNN N={n}, B={b}, T={t}, {dtype}, default problem (Tsit5, PID), block of {k}, "
          f"medians of {args.repeats} interleaved rounds, {jax.devices()[0].platform}")
    print(f"{'row':24s} {'median ms':>10s} {'per vector ms':>14s} {'/ forward':>10s} "
          f"{'min / min fwd':>14s} {'first call s':>13s}")
    fmin = min(times["forward"])
    for name, (_, _, count) in rows.items():
        med = float(np.median(times[name]))
        print(f"{name:24s} {1e3 * med:10.2f} {1e3 * med / count:14.3f} {med / count / fwd:10.2f} "
              f"{min(times[name]) / count / fmin:14.2f} {compile_s[name]:13.2f}")
    print("(goal of issue 19: Θ v block of 16 ≤ 1.5× forward per vector)")


if __name__ == "__main__":
    main()
