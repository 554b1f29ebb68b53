"""Limit cycles and their Floquet multipliers: from a Hopf point onto the cycle branch, and along
it through a fold of cycles and a period doubling.

    python examples/limit_cycles.py            # writes docs/figures/cycles.png
    python examples/limit_cycles.py --smoke    # fast run, writes to a temporary file

(a, b) The Brusselator ẋ = a − (b + 1)x + x²y, ẏ = bx − x²y (a = 1): `ds.continuation` finds the
Hopf point b* = 1 + a² = 2 with l1 < 0 (supercritical); the l1 amplitude predictor puts a cycle
guess at b = 2.01, shooting corrects it, and `continue_periodic_orbit` follows the family. The
period starts at 2π/ω = 2π and the nontrivial multiplier starts at 1 (the cycle is born neutral)
and shrinks as the cycle grows.
(c) The Bautin normal form ṙ = μr + r³ − r⁵: the branch of cycles folds at μ = −1/4 (LPC),
where the nontrivial multiplier passes through 1; stable outer cycles turn into unstable
inner ones.
(d) A 3-D field with a half-twisted transverse bundle: the multiplier −e^{2πμ} crosses −1 at
μ = 0 (period doubling), seen in the complex plane against the unit circle.
"""

import argparse
import pathlib
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

import diffrax_sntk as ds  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffrax_sntk import (  # noqa: E402
    continue_periodic_orbit,
    periodic_orbit_from_hopf,
    periodic_orbit_trajectory,
)


def brusselator(x, b):
    a = 1.0
    return jnp.stack([a - (b + 1) * x[0] + x[0] ** 2 * x[1], b * x[0] - x[0] ** 2 * x[1]])


def bautin(x, mu):
    r2 = x[0] ** 2 + x[1] ** 2
    g = mu + r2 - r2**2
    return jnp.stack([g * x[0] - x[1], x[0] + g * x[1]])


def mobius(x, mu):
    # Cylindrical (ρ, θ, z), θ̇ = 1; ξ = (ρ − 1, z) follows diag(μ, −1) in a frame turning by θ/2.
    rho = jnp.sqrt(x[0] ** 2 + x[1] ** 2)
    c, s = x[0] / rho, x[1] / rho
    xi = jnp.stack([rho - 1, x[2]])
    a, b = mu, -1.0
    B = (a + b) / 2 * jnp.eye(2) + (a - b) / 2 * jnp.array([[c, s], [s, -c]])
    dxi = B @ xi + 0.5 * jnp.array([-xi[1], xi[0]])
    return jnp.stack([dxi[0] * c - x[1], dxi[0] * s + x[0], dxi[1]])


def _nontrivial(multipliers):
    # Each row without its trivial multiplier (the one closest to 1).
    return np.stack([np.delete(row, np.argmin(np.abs(row - 1))) for row in np.asarray(multipliers)])


def main(smoke: bool = False, out: str | None = None) -> pathlib.Path:
    steps = 12 if smoke else 60
    fig, axes = plt.subplots(2, 2, figsize=(9, 7.2))
    (ax_a, ax_b), (ax_c, ax_d) = axes

    # (a, b) Brusselator: Hopf → cycle → family.
    eq = ds.continuation(brusselator, jnp.array([1.0, 1.5]), 1.5, 2.5)
    hopf = next(b for b in eq.bifurcations if b.kind == "hopf")
    orbit = periodic_orbit_from_hopf(brusselator, hopf, float(hopf.parameter) + 0.01)
    b_end = 2.6 if smoke else 3.5
    family = continue_periodic_orbit(
        brusselator, orbit, None, float(hopf.parameter) + 0.01, b_end, max_steps=steps
    )
    bs = np.asarray(family.parameters)
    cmap = plt.get_cmap("viridis")
    for i in range(0, len(bs), max(1, len(bs) // 8)):
        ys = periodic_orbit_trajectory(
            brusselator, family.parameters[i], family.states[i], family.periods[i], num=200
        )
        color = cmap((bs[i] - bs[0]) / max(bs[-1] - bs[0], 1e-12))
        ax_a.plot(ys[:, 0], ys[:, 1], color=color, lw=1)
    ax_a.plot(*np.asarray(hopf.state), "k+", ms=10, label=f"Hopf, b* = {float(hopf.parameter):.4f}")
    ax_a.set(xlabel="x", ylabel="y", title="Brusselator cycles (colour: b)")
    ax_a.legend(loc="upper right", fontsize=8)
    ax_b.plot(bs, np.asarray(family.periods), "k-", label="period T")
    ax_b.axhline(2 * np.pi, color="0.6", ls=":", label="2π/ω at the Hopf point")
    ax_b.set(xlabel="b", ylabel="T", title="Period and nontrivial multiplier")
    twin = ax_b.twinx()
    twin.semilogy(bs, np.abs(_nontrivial(family.multipliers)[:, 0]), "C3-")
    twin.set_ylabel("nontrivial multiplier (log scale)", color="C3")
    ax_b.legend(loc="center right", fontsize=8)

    # (c) Bautin: fold of cycles.
    mu0 = -0.1
    r0 = np.sqrt((1 + np.sqrt(1 + 4 * mu0)) / 2)
    bt = continue_periodic_orbit(
        bautin, jnp.array([r0, 0.0]), 2 * np.pi, mu0, -0.3, max_steps=steps
    )
    mus = np.asarray(bt.parameters)
    amp = np.linalg.norm(np.asarray(bt.states), axis=1)
    stable = np.asarray(bt.stable)
    ax_c.plot(mus[stable], amp[stable], "k.", label="stable cycle")
    ax_c.plot(mus[~stable], amp[~stable], "o", mfc="none", color="k", label="unstable cycle")
    grid = np.linspace(-0.25, mu0, 200)
    for sign in (1, -1):
        ax_c.plot(
            grid, np.sqrt((1 + sign * np.sqrt(1 + 4 * grid)) / 2), color="0.7", lw=3, zorder=0
        )
    for bif in bt.bifurcations:
        ax_c.axvline(
            float(bif.parameter),
            color="C3",
            ls="--",
            label=f"{bif.kind} at μ = {float(bif.parameter):.10f}",
        )
    ax_c.set(xlabel="μ", ylabel="radius", title="Bautin: fold of cycles (grey: analytic)")
    ax_c.legend(fontsize=8)

    # (d) Period doubling: multipliers in the complex plane.
    pd = continue_periodic_orbit(
        mobius,
        jnp.array([1.0, 0.0, 0.0]),
        2 * np.pi,
        -0.3,
        0.3,
        max_steps=steps,
        max_step_size=0.06 if smoke else 0.025,
    )
    t = np.linspace(0, 2 * np.pi, 300)
    ax_d.plot(np.cos(t), np.sin(t), color="0.7")
    m = np.asarray(pd.multipliers)
    sc = ax_d.scatter(
        m.real.ravel(),
        m.imag.ravel(),
        c=np.repeat(np.asarray(pd.parameters), 3),
        cmap="coolwarm",
        s=12,
    )
    fig.colorbar(sc, ax=ax_d, label="μ")
    for bif in pd.bifurcations:
        ax_d.plot(-1, 0, "kx", ms=10, label=f"{bif.kind} at μ = {float(bif.parameter):.1e}")
    ax_d.set(
        xlabel="Re",
        ylabel="Im",
        title="Floquet multipliers: period doubling",
        xlim=(-4.5, 1.5),
        ylim=(-1.5, 1.5),
        aspect="equal",
    )
    ax_d.legend(fontsize=8, loc="lower left")
    fig.tight_layout()

    if out is None:
        if smoke:
            out = str(pathlib.Path(tempfile.mkdtemp()) / "cycles.png")
        else:
            out = str(pathlib.Path(__file__).parent.parent / "docs" / "figures" / "cycles.png")
    fig.savefig(out, dpi=130)
    plt.close(fig)
    if not smoke:
        l1 = float(hopf.normal_form.l1)
        print(f"Hopf b* − 2 = {float(hopf.parameter) - 2:.2e}, l1 = {l1:.6f}")
        print(f"first cycle: T − 2π = {float(family.periods[0]) - 2 * np.pi:.3e}")
        for bif in (*bt.bifurcations, *pd.bifurcations):
            print(f"{bif.kind}: parameter {float(bif.parameter):.12f}")
    return pathlib.Path(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    print(main(smoke=ns.smoke, out=ns.out))
