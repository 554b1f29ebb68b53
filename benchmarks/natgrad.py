"""Per-step cost of `ds.low_rank_natural_gradient` against plain SGD and Adam (issue 6).

Same jitted training step for every optimizer (loss, gradient, J built at the current model,
`opt.update(..., jacobian=J)`, apply), a CTRNN with N = 64, B = 16 trials, T = 50 observation
times, rank 4, refresh every 10 steps. The optimizers' steps are interleaved round by round, so
that load from other processes hits all of them alike. Reported: the median step time (the
issue's figure; with refresh_every = 10 the median is a non-refresh step), the mean (amortised,
refreshes included) and the refresh step alone.

    python benchmarks/natgrad.py [--steps 60] [--x64] [--hidden 64] [--batch 16] [--times 50]
"""

import argparse
import time

import jax


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--times", type=int, default=50)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--refresh-every", type=int, default=10)
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

    n, b, t = args.hidden, args.batch, args.times
    student = ds.CTRNN(n, key=jr.PRNGKey(0), gain=0.8)
    teacher = ds.CTRNN(n, key=jr.PRNGKey(1), gain=1.5)
    problem = ds.TrajectoryProblem(jnp.linspace(0.1, 5.0, t), jr.normal(jr.PRNGKey(2), (b, n)))
    target = eqx.filter_jit(ds.simulate)(teacher, problem)

    def loss_fn(model):
        return jnp.mean((ds.simulate(model, problem) - target) ** 2)

    num = target.size
    optimizers = {
        "sgd": optax.with_extra_args_support(optax.sgd(1e-2)),
        "adam": optax.with_extra_args_support(optax.adam(1e-3)),
        "natgrad": ds.low_rank_natural_gradient(
            1e-2, rank=args.rank, refresh_every=args.refresh_every, loss_hessian=2.0 / num
        ),
    }

    def make_step(opt):
        @eqx.filter_jit
        def step(model, state):
            loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
            J = ds.jacobian_operator(model, problem)
            params = eqx.filter(model, eqx.is_inexact_array)
            updates, state = opt.update(grads, state, params, jacobian=J)
            return eqx.apply_updates(model, updates), state, loss

        return step

    runs = {}
    for name, opt in optimizers.items():
        step = make_step(opt)
        state = opt.init(eqx.filter(student, eqx.is_inexact_array))
        start = time.perf_counter()
        model, state, loss = step(student, state)
        jax.block_until_ready(loss)
        print(f"{name:8s} compile + first step: {time.perf_counter() - start:6.1f} s", flush=True)
        runs[name] = [step, model, state, []]

    for _ in range(args.steps):
        for _name, run in runs.items():
            step, model, state, times = run
            start = time.perf_counter()
            model, state, loss = step(model, state)
            jax.block_until_ready((model, state, loss))
            times.append(time.perf_counter() - start)
            run[1], run[2] = model, state

    sgd = np.median(runs["sgd"][3])
    sgd_mean = np.mean(runs["sgd"][3])
    nparams = sum(x.size for x in jax.tree.leaves(eqx.filter(student, eqx.is_inexact_array)))
    print(
        f"\nCTRNN N={n} ({nparams} parameters), B={b}, T={t}, rank {args.rank}, refresh every "
        f"{args.refresh_every}, {args.steps} steps, {jax.devices()[0].platform}, "
        f"{'float64' if args.x64 else 'float32'}"
    )
    print(f"{'optimizer':10s} {'median ms':>10s} {'/ SGD':>7s} {'mean ms':>9s} {'/ SGD':>7s}")
    for name, (_, _model, _, times) in runs.items():
        med, mean = np.median(times), np.mean(times)
        print(
            f"{name:10s} {1e3 * med:10.2f} {med / sgd:7.2f} {1e3 * mean:9.2f} "
            f"{mean / sgd_mean:7.2f}"
        )
    times = np.asarray(runs["natgrad"][3])
    # Step i (0-based, after the warm-up step 0) has count i + 1: refreshes at count % r == 0.
    refresh = np.array([(i + 1) % args.refresh_every == 0 for i in range(len(times))])
    if refresh.any():
        print(
            f"natgrad refresh step: median {1e3 * np.median(times[refresh]):.2f} ms "
            f"({np.median(times[refresh]) / sgd:.2f}x SGD); other steps: median "
            f"{1e3 * np.median(times[~refresh]):.2f} ms ({np.median(times[~refresh]) / sgd:.2f}x)"
        )
    for name, (_, model, _, _) in runs.items():
        print(f"final loss {name}: {float(loss_fn(model)):.4g}")


if __name__ == "__main__":
    main()
