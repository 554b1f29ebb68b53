"""A bifurcation-aware loss: a penalty that keeps training on one side of a fold.

    python examples/bifurcation_aware_loss.py          # 300 Adam steps, prints both runs
    python examples/bifurcation_aware_loss.py --smoke  # a few steps, for the test suite

The system ẋ = μ x − x³ + b is bistable at the operating point μ = μ_op as long as the fold
μ*(b) = 3 (b/2)^{2/3} lies below μ_op. The task asks the lower stable state x_low(b) to reach
a target that lies *beyond* the fold: plain gradient descent pushes b through the fold, where
the lower state is destroyed (the state jumps to the upper branch and the loss jumps with it).
The bifurcation-aware loss adds a soft barrier on the fold margin m(b) = μ_op − μ*(b):

    L(b) = (x_low(b) − target)² + λ τ softplus((m_min − m(b)) / τ),

where μ*(b) comes from `bifurcation_point` (differentiable in b by the implicit function
theorem) and x_low(b) from an optimistix Newton solve (also differentiated implicitly).
Training then settles at the best point that keeps the margin, without ever computing a
bifurcation diagram inside the loop: the fold found once by `continuation` is re-solved at
each step from the previous one.
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import optimistix as optx  # noqa: E402

import diffrax_sntk as ds  # noqa: E402

MU_OP = 2.0  # operating point
TARGET = -0.7  # lower state asked for: beyond the fold (x_low ≥ −(μ_op/3)^{1/2} ≈ −0.816)
MARGIN = 0.2  # fold margin to keep
WEIGHT, WIDTH = 10.0, 0.02  # barrier height and softness


def family(x, mu, b):
    return mu * x - x**3 + b


def lower_state(b, x_prev):
    # One Newton solve from the previous state, differentiated implicitly by optimistix.
    # (`find_fixed_points` vmaps its starts, and reverse mode through a vmapped optimistix
    # solve with unbatched parameters fails in the current JAX/optimistix.)
    sol = optx.root_find(
        lambda x, b: family(x, MU_OP, b),
        optx.Newton(rtol=1e-10, atol=1e-10),
        x_prev,
        args=b,
        throw=False,
    )
    return sol.value


def make_step(optimizer, aware: bool):
    @eqx.filter_jit
    def step(b, opt_state, x_prev, fold):
        def loss(b):
            x = lower_state(b, x_prev)
            task = jnp.sum((x - TARGET) ** 2)
            point = ds.bifurcation_point(family, fold, b)
            margin = MU_OP - point.parameter
            barrier = WEIGHT * WIDTH * jax.nn.softplus((MARGIN - margin) / WIDTH)
            total = task + (barrier if aware else 0.0)
            return total, (x, point, margin)

        (value, (x, point, margin)), grad = jax.value_and_grad(loss, has_aux=True)(b)
        updates, opt_state = optimizer.update(grad, opt_state)
        return optax.apply_updates(b, updates), opt_state, x, point, margin, value

    return step


def train(aware: bool, steps: int, fold0):
    optimizer = optax.adam(2e-2)
    b = jnp.asarray(0.2)
    opt_state = optimizer.init(b)
    x = jnp.array([-1.4])
    fold = fold0
    step = make_step(optimizer, aware)
    history = {"b": [], "loss": [], "fold_margin": [], "x_low": [], "result": []}
    for _ in range(steps):
        b, opt_state, x, point, margin, value = step(b, opt_state, x, fold)
        ok = bool(point.result == ds.RESULTS.successful)
        if ok:
            fold = jax.lax.stop_gradient(point)  # next step starts from the re-solved fold
        history["b"].append(float(b))
        history["loss"].append(float(value))
        history["fold_margin"].append(float(margin))
        history["x_low"].append(float(x[0]))
        history["result"].append(ok)
    return history


def main(smoke: bool = False) -> dict:
    steps = 15 if smoke else 300
    b0 = 0.2
    # The fold, found once by continuation from the lower branch at b0, then re-solved in the
    # loss (differentiably) as b moves.
    branch = ds.continuation(family, jnp.array([-1.6]), 3.0, 0.0, args=jnp.asarray(b0))
    (fold,) = [bif for bif in branch.bifurcations if bif.kind == "fold"]
    aware = train(True, steps, fold)
    history = dict(aware)
    if not smoke:
        plain = train(False, steps, fold)
        history["plain_fold_margin"] = plain["fold_margin"]
        for name, h in (("plain", plain), ("bifurcation-aware", aware)):
            print(
                f"{name:>18}: b = {h['b'][-1]:.4f}, fold margin = {h['fold_margin'][-1]:+.4f}, "
                f"x_low = {h['x_low'][-1]:+.4f}, min margin = {min(h['fold_margin']):+.4f}"
            )
    else:
        print(f"smoke: b = {aware['b'][-1]:.4f}, fold margin = {aware['fold_margin'][-1]:+.4f}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="fast run for the test suite")
    main(smoke=parser.parse_args().smoke)
