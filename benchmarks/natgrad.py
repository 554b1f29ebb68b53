"""Per-step cost of `ds.low_rank_natural_gradient` against plain SGD and Adam (issues 6, 19).

A CTRNN with N = 64, B = 16 trials, T = 50 observation times, float32, rank 4, refresh every 10
steps, the loss the MSE of the trajectory against a teacher's. Every optimizer runs in its own
jitted training step; the steps are interleaved round by round, so that load from other
processes hits all of them alike. Rows:

- `sgd`, `adam`, `natgrad`: the user's usual step: `eqx.filter_value_and_grad` of the loss
  through `ds.simulate`, J = `ds.jacobian_operator(model, problem)` built inside the step (the
  solve path), `opt.update(..., jacobian=J)`.
- `natgrad-shared`: the step of `ds.trajectory_and_jacobian`: one recording solve and one
  linearised replay give the trajectory, the gradient (`J.transpose().mv(∂L/∂X)`) and the J
  that the refresh uses, so a refresh costs only linear passes over the stored steps.
- `sgd-shared`: SGD on the same shared step (no refresh): how much of the difference is the
  cheaper gradient alone.
- `natgrad-adaptive`: `natgrad-shared` with `refresh_tol` (`--refresh-tol`) and a longest
  interval of `--adaptive-every` steps.

Reported side by side: median and mean step time (the mean includes the refresh steps: it is
the amortised cost), each over SGD's, the refresh steps alone, the number of refreshes, and the
load average (`os.getloadavg`) before and after.

    python benchmarks/natgrad.py [--steps 60] [--x64] [--hidden 64] [--batch 16] [--times 50]
"""

import argparse
import os
import time

import jax
import jax.flatten_util


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--times", type=int, default=50)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--refresh-tol", type=float, default=0.5)
    parser.add_argument("--adaptive-every", type=int, default=50)
    parser.add_argument("--num-steps", type=int, default=None,
                        help="replay grid length of the shared steps (default: the recorded "
                             "count with a quarter to spare, bucketed)")
    parser.add_argument("--only", default=None, help="comma-separated rows to run (sgd always)")
    parser.add_argument("--x64", action="store_true")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)

    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax

    import diffrax_sntk as ds
    from diffrax_sntk._operators import trajectory_and_jacobian
    from diffrax_sntk._problem import partition_model
    from diffrax_sntk._replay import bucket_steps, record_steps

    load_before = os.getloadavg()
    n, b, t = args.hidden, args.batch, args.times
    student = ds.CTRNN(n, key=jr.PRNGKey(0), gain=0.8)
    teacher = ds.CTRNN(n, key=jr.PRNGKey(1), gain=1.5)
    problem = ds.TrajectoryProblem(jnp.linspace(0.1, 5.0, t), jr.normal(jr.PRNGKey(2), (b, n)))
    target = eqx.filter_jit(ds.simulate)(teacher, problem)
    # The shared step runs inside `jit`, so its step grid has a static length: the larger of
    # the student's and the teacher's recorded step counts, with a quarter to spare.
    counts = [int(jnp.max(record_steps(*partition_model(m), problem)[1]))
              for m in (student, teacher)]
    num_steps = args.num_steps or bucket_steps(int(1.25 * max(counts)))

    def loss_of(ys):
        return jnp.mean((ys - target) ** 2)

    def loss_fn(model):
        return loss_of(ds.simulate(model, problem))

    num = target.size
    natgrad = lambda **kw: ds.low_rank_natural_gradient(  # noqa: E731
        1e-2, rank=args.rank, loss_hessian=2.0 / num, **kw
    )
    sgd = optax.with_extra_args_support(optax.sgd(1e-2))
    rows = {
        "sgd": (sgd, False),
        "adam": (optax.with_extra_args_support(optax.adam(1e-3)), False),
        "natgrad": (natgrad(refresh_every=args.refresh_every), False),
        "natgrad-shared": (natgrad(refresh_every=args.refresh_every), True),
        "sgd-shared": (sgd, True),
        "natgrad-adaptive": (
            natgrad(refresh_every=args.adaptive_every, refresh_tol=args.refresh_tol), True
        ),
    }
    if args.only:
        keep = {"sgd", *args.only.split(",")}
        rows = {k: v for k, v in rows.items() if k in keep}

    def make_step(opt, shared):
        @eqx.filter_jit
        def step(model, state):
            params = eqx.filter(model, eqx.is_inexact_array)
            if shared:
                ys, J = trajectory_and_jacobian(model, problem, num_steps=num_steps)
                loss, dys = jax.value_and_grad(loss_of)(ys)
                grads = J.transpose().mv(dys)
            else:
                loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
                J = ds.jacobian_operator(model, problem)
            # ‖g − U_kU_kᵀg‖/‖g‖ before the update (what `refresh_tol` tests), for the report.
            ratio = jnp.nan
            if hasattr(state, "basis"):
                flat = jax.flatten_util.ravel_pytree(grads)[0]
                Uk = state.basis[:, : args.rank]
                ratio = jnp.linalg.norm(flat - Uk @ (Uk.T @ flat)) / jnp.linalg.norm(flat)
            updates, state = opt.update(grads, state, params, jacobian=J)
            return eqx.apply_updates(model, updates), state, (loss, ratio)

        return step

    runs = {}
    for name, (opt, shared) in rows.items():
        step = make_step(opt, shared)
        state = opt.init(eqx.filter(student, eqx.is_inexact_array))
        start = time.perf_counter()
        model, state, loss = step(student, state)
        jax.block_until_ready(loss)
        print(f"{name:16s} compile + first step: {time.perf_counter() - start:6.1f} s", flush=True)
        runs[name] = dict(step=step, model=model, state=state, times=[], refreshed=[], ratio=[])

    for _ in range(args.steps):
        for run in runs.values():
            old = getattr(run["state"], "basis", None)
            start = time.perf_counter()
            model, state, loss = run["step"](run["model"], run["state"])
            jax.block_until_ready((model, state, loss))
            run["times"].append(time.perf_counter() - start)
            # A refresh replaces the basis (outside the timed region).
            new = getattr(state, "basis", None)
            run["refreshed"].append(old is not None and not bool(jnp.array_equal(old, new)))
            run["model"], run["state"] = model, state
            run["ratio"].append(float(loss[1]))

    sgd_med = np.median(runs["sgd"]["times"])
    sgd_mean = np.mean(runs["sgd"]["times"])
    nparams = sum(x.size for x in jax.tree.leaves(eqx.filter(student, eqx.is_inexact_array)))
    print(
        f"\nCTRNN N={n} ({nparams} parameters), B={b}, T={t}, rank {args.rank}, refresh every "
        f"{args.refresh_every}, {args.steps} steps, {jax.devices()[0].platform}, "
        f"{'float64' if args.x64 else 'float32'}; shared steps: replay grid of {num_steps} steps "
        f"(recorded {max(counts)})"
    )
    print(f"{'optimizer':17s} {'median ms':>10s} {'/ SGD':>7s} {'mean ms':>9s} {'/ SGD':>7s} "
          f"{'refreshes':>9s} {'refresh-step ms':>15s} {'/ SGD':>7s}")
    for name, run in runs.items():
        times = np.asarray(run["times"])
        med, mean = np.median(times), np.mean(times)
        ref = np.asarray(run["refreshed"])
        count = int(ref.sum())
        rmed = f"{1e3 * np.median(times[ref]):15.2f} {np.median(times[ref]) / sgd_med:7.2f}" \
            if count else f"{'-':>15s} {'-':>7s}"
        print(f"{name:17s} {1e3 * med:10.2f} {med / sgd_med:7.2f} {1e3 * mean:9.2f} "
              f"{mean / sgd_mean:7.2f} {count:9d} {rmed}")
    for name, run in runs.items():
        r = np.asarray(run["ratio"])
        if np.all(np.isfinite(r)):
            print(f"{name}: ‖g − U_kU_kᵀg‖/‖g‖ min {r.min():.3f}, median {np.median(r):.3f}, "
                  f"max {r.max():.3f}")
    for name, run in runs.items():
        print(f"final loss {name}: {float(loss_fn(run['model'])):.4g}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(2 cores)")


if __name__ == "__main__":
    main()
