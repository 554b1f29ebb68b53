"""The `diffrax-sntk` command."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import diffrax_sntk as ds

    t_start = time.perf_counter()
    key_model, key_y0 = jr.split(jr.PRNGKey(args.seed))
    model = ds.CTRNN(args.hidden, key=key_model, gain=args.gain)
    ts = jnp.linspace(0.5, 10.0, args.times)
    problem = ds.TrajectoryProblem(ts, jr.normal(key_y0, (args.batch, args.hidden)))
    theta = ds.sntk_operator(model, problem)
    dim = args.batch * args.times * args.hidden
    mat = np.asarray(eqx.filter_jit(lambda op: op.as_matrix())(theta))
    eig = np.sort(np.linalg.eigvalsh(mat))[::-1]
    eig = np.clip(eig, 0.0, None)
    pr = eig.sum() ** 2 / (eig**2).sum()
    print(
        f"sNTK of a CTRNN (N={args.hidden}, gain={args.gain}), {args.batch} trials x "
        f"{args.times} times: Θ is {dim} x {dim}"
    )
    print(f"trace = {eig.sum():.6g}, participation ratio = {pr:.3f}")
    print("top eigenvalues:")
    for i, lam in enumerate(eig[: args.top]):
        print(f"  λ_{i + 1} = {lam:.6e}   ({lam / eig.sum():6.2%} of the trace)")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="diffrax-sntk",
        description="State-space NTK analysis of continuous-time models (diffrax).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print the sNTK spectrum of a small CTRNN")
    demo.add_argument("--hidden", type=int, default=8)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--times", type=int, default=10)
    demo.add_argument("--gain", type=float, default=0.9)
    demo.add_argument("--top", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
