"""The sNTK of your own diffrax model, in about ten lines.

    python examples/sntk_of_your_model.py [--smoke]
"""

import argparse

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr

jax.config.update("jax_enable_x64", True)  # spectra need float64

import diffrax_sntk as ds  # noqa: E402


def main(smoke: bool = False):
    n, batch, times = (4, 2, 8) if smoke else (16, 8, 40)

    # --- an existing diffrax vector field and its parameters, unchanged
    def f(t, y, args):
        return -y + args["W"] @ jnp.tanh(y) + args["b"]

    args = {"W": 0.9 * jr.normal(jr.PRNGKey(0), (n, n)) / jnp.sqrt(n), "b": jnp.zeros(n)}

    # --- three lines: the model, the problem, the operator
    model = ds.VectorField(f, args)
    solve = dict(stepsize_controller=dfx.ConstantStepSize(), dt0=0.1) if smoke else {}
    problem = ds.TrajectoryProblem(
        jnp.linspace(0.5, 10.0, times), jr.normal(jr.PRNGKey(1), (batch, n)), **solve
    )
    theta = ds.sntk_operator(model, problem)

    pairs = ds.top_eigenpairs(theta, 3, key=jr.PRNGKey(2))
    pr = ds.effective_rank(theta, key=jr.PRNGKey(3))
    print(f"Θ has dimension {batch * times * n}")
    print("top eigenvalues:", jnp.asarray(pairs.values))
    print("participation ratio:", pr)
    return pairs, pr


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    main(parser.parse_args().smoke)
