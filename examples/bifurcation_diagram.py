"""Bifurcation diagram of a CTRNN unit, made with `bifurcation_diagram` and
`diffrax_sntk.plotting.plot_bifurcation_diagram`.

    python examples/bifurcation_diagram.py            # writes docs/figures/bifurcation_diagram*.png
    python examples/bifurcation_diagram.py --smoke    # fast run, writes to a temporary file

Left: ẋ = −x + g·tanh(x): the origin loses stability in a supercritical pitchfork at g = 1. One
`bifurcation_diagram` call continues the origin, switches branches at the pitchfork and returns
both outer branches x = ±x*(g).
Right: the imperfect unit ẋ = −x + g·tanh(x) + h: the pitchfork unfolds and the disconnected
branch has a fold (saddle-node), where pseudo-arclength continuation turns back.
"""

import argparse
import pathlib
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

import diffrax_sntk as ds  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffrax_sntk.plotting import plot_bifurcation_diagram  # noqa: E402

bifurcation_diagram = ds.bifurcation_diagram


def result_name(result) -> str:
    return "successful" if result == ds.RESULTS.successful else ds.RESULTS[result]


def symmetric(x, g):
    return -x + g * jnp.tanh(x)


def imperfect(x, g):
    return -x + g * jnp.tanh(x) + 0.05


def three_lines(x, mu):
    """ẋ = x (x − μ)(x − 2μ + 1): three lines of equilibria crossing pairwise."""
    return x * (x - mu) * (x - 2 * mu + 1)


def recursive_figure(path: pathlib.Path) -> None:
    """Depth two: the branch x = μ, switched to at (0, 0), meets x = 2μ − 1 at (1, 1); the
    switch there retraces a known branch and is dropped as a duplicate."""
    diagram = bifurcation_diagram(three_lines, jnp.zeros(1), -1.0, 2.0, max_depth=3)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    plot_bifurcation_diagram(diagram, ax=ax, xlabel="μ", ylabel="x")
    ax.set_title("ẋ = x(x − μ)(x − 2μ + 1): three transcriticals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(
        f"three lines: {len(diagram.branches)} branches (depths {diagram.depths}), "
        f"{diagram.num_duplicates} duplicates dropped; wrote {path}"
    )


def main(smoke: bool = False, out: str | None = None) -> pathlib.Path:
    g_max = 2.0 if smoke else 3.0
    step = 0.2 if smoke else None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)

    # The origin's branch, the pitchfork on it and both outer branches, from one call.
    diagram = bifurcation_diagram(symmetric, jnp.zeros(1), 0.2, g_max, max_step_size=step)
    trivial = diagram.primary
    plot_bifurcation_diagram(diagram, ax=ax1, xlabel="gain g", ylabel="x")
    ax1.set_title("ẋ = −x + g tanh x: pitchfork, switched branches")

    upper = ds.continuation(imperfect, jnp.zeros(1), 0.2, g_max, max_step_size=step)
    lower = ds.continuation(imperfect, jnp.array([-2.5]), g_max, 0.2, max_step_size=step)
    plot_bifurcation_diagram([upper, lower], ax=ax2, color="k", xlabel="gain g", ylabel="")
    ax2.set_title("ẋ = −x + g tanh x + 0.05: fold")
    fig.tight_layout()

    if out is None:
        if smoke:
            out = str(pathlib.Path(tempfile.mkdtemp()) / "bifurcation_diagram.png")
        else:
            root = pathlib.Path(__file__).resolve().parents[1]
            out = str(root / "docs/figures/bifurcation_diagram.png")
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    for name, br in (("trivial", trivial), ("upper", upper), ("lower", lower)):
        found = ", ".join(f"{b.kind} at g = {float(b.parameter):.8f}" for b in br.bifurcations)
        print(f"{name}: {br.status}; {found or 'no bifurcation'}")
    for i, br in enumerate(diagram.branches[1:], 1):
        x_end = float(br.states[-1, 0])
        print(
            f"switched branch {i} (side {diagram.sides[i]:+d}): {br.status}, "
            f"x = {x_end:+.6f} at g = {float(br.parameters[-1]):.3f}"
        )
    print(f"diagram: {len(diagram.branches)} branches, {result_name(diagram.result)}")
    print(f"wrote {path}")
    if not smoke:
        recursive_figure(path.with_name("bifurcation_diagram_recursive.png"))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="fast run for the test suite")
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    main(smoke=ns.smoke, out=ns.out)
