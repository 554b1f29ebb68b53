"""Is the sweep's dense J at its floor? The exact path against a forward-sensitivity solve.

The sweep's exact evaluation (`_run._evaluate_one`) materialises J with `as_matrix()`: a vmapped
block of one-hot tangents pushed through one forward-mode `diffeqsolve`, so every tangent carries
its own ∂f/∂θ e_k (for the recurrent weights, a dense product with a one-hot matrix). The
alternative measured here integrates the forward-sensitivity system S' = (∂f/∂x) S + ∂f/∂θ for
the whole N × P matrix S at once, with ∂f/∂θ from N reverse-mode products per stage and the
controller's norm restricted to the primal and its probe tangent (so the step sequence, hence
the discrete map, is the same). Both are timed interleaved on seed 0's initial student; the
script prints mean and median of each and the largest relative difference between the two J.

    python benchmarks/materialise_paths.py [--task hopf_trained] [--hidden 32] [--repeats 5]

The alternative stays here rather than in the library because it is not faster (the closing
note of session 8 has the figures): both paths spend their time on the Runge–Kutta arithmetic
of the B × N × P tangent state and the (∂f/∂x) S products, which neither avoids.
"""

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.flatten_util as jfu  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import diffrax_sntk as ds  # noqa: E402
from diffrax_sntk._problem import _probe_direction  # noqa: E402
from diffrax_sntk.experiments import StudentTeacherConfig  # noqa: E402
from diffrax_sntk.experiments._run import canonical, make_problem, param_spec, setups  # noqa: E402


def _restrict_norm(controller, pick):
    # The error norm sees only `pick(z)`: the primal and the probe tangent, as in the solve path.
    if isinstance(controller, dfx.PIDController):
        norm = controller.norm
        return eqx.tree_at(lambda c: c.norm, controller, lambda z: norm(pick(z)))
    if hasattr(controller, "controller"):
        inner = _restrict_norm(controller.controller, pick)
        return eqx.tree_at(lambda c: c.controller, controller, inner)
    return controller


def sensitivity_matrix(params, static, problem):
    """J (B·T·N, P) from one forward-sensitivity solve per trial (state space)."""
    flat, unravel = jfu.ravel_pytree(params)
    probe = jfu.ravel_pytree(_probe_direction(params))[0]
    controller = _restrict_norm(problem.stepsize_controller, lambda z: (z[0], z[1]))

    def one(x0, trial_inputs):
        def field(t, x, theta):
            model = eqx.combine(unravel(theta), static)
            return model(t, x, problem.input_at(t, trial_inputs))

        def term(t, z, theta):
            x, s, S = z
            _, ds_probe = jax.jvp(lambda xx, pp: field(t, xx, pp), (x, theta), (s, probe))
            A = jax.jacfwd(field, argnums=1)(t, x, theta)
            F = jax.jacrev(field, argnums=2)(t, x, theta)
            return field(t, x, theta), ds_probe, A @ S + F

        z0 = (x0, jnp.zeros_like(x0), jnp.zeros((x0.size, flat.size), x0.dtype))
        sol = dfx.diffeqsolve(
            dfx.ODETerm(term), problem.solver, problem.t0, problem.ts[-1], problem.dt0, z0, flat,
            saveat=dfx.SaveAt(ts=problem.ts, fn=lambda t, z, a: z[2]),
            stepsize_controller=controller, max_steps=problem.max_steps, throw=False,
            adjoint=dfx.ForwardMode(),
        )
        return sol.ys

    S = jax.vmap(one)(problem.y0, problem.per_trial_inputs())
    return S.reshape(-1, flat.size)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="hopf_trained",
                        choices=("fold", "hopf_fixed", "hopf_trained"))
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    fields = (dict(task="fold") if args.task == "fold"
              else dict(task="hopf", hopf_frequency=args.task.split("_")[1]))
    cfg = canonical(StudentTeacherConfig(hidden=args.hidden, learning_rates=(0.1, 0.3), **fields))
    batch = setups(cfg, [0])
    student = jax.tree_util.tree_map(lambda x: x[0], batch.student)
    spec = param_spec(cfg, student)
    params, static = eqx.partition(student, spec)
    problem = make_problem(cfg, batch.y0[0])

    def solve_path(p):
        return ds.jacobian_operator(eqx.combine(p, static), problem, filter_spec=spec).as_matrix()

    paths = {"solve path (as_matrix)": jax.jit(solve_path),
             "forward sensitivity": jax.jit(lambda p: sensitivity_matrix(p, static, problem))}
    out = {name: jax.block_until_ready(fn(params)) for name, fn in paths.items()}  # compile
    ref, alt = out.values()
    times = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(params))
            times[name].append(time.perf_counter() - t)
    rel = float(jnp.max(jnp.abs(alt - ref)) / jnp.max(jnp.abs(ref)))
    print(f"{args.task}, N = {args.hidden}, J {ref.shape}, {args.repeats} interleaved repeats")
    print("| path | mean (s) | median (s) |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.mean(ts):.2f} | {statistics.median(ts):.2f} |")
    base = statistics.median(times["solve path (as_matrix)"])
    print(f"median ratio (sensitivity / solve path): "
          f"{statistics.median(times['forward sensitivity']) / base:.2f}")
    print(f"largest difference between the two J, relative to max |J|: {rel:.1e}")


if __name__ == "__main__":
    main()
