"""Bifurcation diagram of a CTRNN unit, made with `diffrax_sntk.plotting.plot_bifurcation_diagram`.

    python examples/bifurcation_diagram.py            # writes docs/figures/bifurcation_diagram.png
    python examples/bifurcation_diagram.py --smoke    # fast run, writes to a temporary file

Left: ẋ = −x + g·tanh(x): the origin loses stability in a supercritical pitchfork at g = 1.
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


def symmetric(x, g):
    return -x + g * jnp.tanh(x)


def imperfect(x, g):
    return -x + g * jnp.tanh(x) + 0.05


def main(smoke: bool = False, out: str | None = None) -> pathlib.Path:
    g_max = 2.0 if smoke else 3.0
    step = 0.2 if smoke else None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)

    trivial = ds.continuation(symmetric, jnp.zeros(1), 0.2, g_max, max_step_size=step)
    # The two non-trivial branches, from the fixed points found at g = g_max.
    fps = ds.find_fixed_points(symmetric, g_max, jnp.array([[-2.0], [2.0]])).deduplicated()
    outer = [
        ds.continuation(symmetric, x, g_max, 1.02, max_step_size=step, detect_bifurcations=False)
        for x in fps.states
    ]
    plot_bifurcation_diagram([trivial, *outer], ax=ax1, color="k", xlabel="gain g", ylabel="x")
    ax1.set_title("ẋ = −x + g tanh x: pitchfork")

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
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="fast run for the test suite")
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    main(smoke=ns.smoke, out=ns.out)
