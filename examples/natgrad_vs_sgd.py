"""Low-rank natural gradient vs SGD through a learned pitchfork.

The student dx/dt = −x + g·tanh(x) + b starts with g < 1 (one stable fixed point) and is fitted to
a bistable teacher (g = 2). SGD's curvature blows up as g crosses 1; the low-rank natural gradient
at the same learning rate is not affected.

    python examples/natgrad_vs_sgd.py [--smoke]
"""

import argparse

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

jax.config.update("jax_enable_x64", True)

import diffrax_sntk as ds  # noqa: E402


def field(t, x, args):
    return -x + args["g"] * jnp.tanh(x) + args["b"]


def main(smoke: bool = False, learning_rate: float = 0.5):
    steps = 6 if smoke else 60
    ts = jnp.linspace(0.5, 8.0, 16)
    y0 = jnp.array([[-0.3], [-0.1], [0.1], [0.3]])
    # Smoke mode: fixed steps compile about twice as fast as the adaptive default.
    solve = dict(stepsize_controller=dfx.ConstantStepSize(), dt0=0.1) if smoke else dict(
        rtol=1e-7, atol=1e-9
    )
    problem = ds.TrajectoryProblem(ts, y0, **solve)
    teacher = ds.VectorField(field, {"g": jnp.array(2.0), "b": jnp.array(0.0)})
    target = ds.simulate(teacher, problem)
    student = ds.VectorField(field, {"g": jnp.array(0.5), "b": jnp.array(0.0)})

    def loss_fn(model):
        return jnp.mean((ds.simulate(model, problem) - target) ** 2)

    def train(opt, uses_jacobian):
        @eqx.filter_jit
        def step(model, state):
            loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
            extra = {"jacobian": ds.jacobian_operator(model, problem)} if uses_jacobian else {}
            updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array),
                                        **extra)
            return eqx.apply_updates(model, updates), state, loss

        model, state, losses = student, opt.init(eqx.filter(student, eqx.is_inexact_array)), []
        for _ in range(steps):
            model, state, loss = step(model, state)
            losses.append(float(loss))
        return losses

    sgd = train(optax.sgd(learning_rate), False)
    ng = train(ds.low_rank_natural_gradient(learning_rate, rank=1, refresh_every=1,
                                            loss_hessian=2.0 / target.size), True)
    for name, losses in (("SGD", sgd), ("natural gradient", ng)):
        rises = [b / a - 1 for a, b in zip(losses, losses[1:], strict=False)]
        print(f"{name:>17}: final loss {losses[-1]:.3e}, largest rise between steps "
              f"{max(rises):+.1%}")
    return sgd, ng


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)
