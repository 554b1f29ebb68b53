"""Analysing a trained RNN: the 3-bit flip-flop (Sussillo & Barak 2013) with `diffrax_sntk`.

    python examples/flip_flop.py            # N = 64; writes docs/figures/flip_flop_*.png
    python examples/flip_flop.py --smoke    # seconds, a tiny network, temporary files

1. Train a CTRNN τ ẋ = −x + W tanh(x) + U u + b, y = C x + d on the flip-flop task: three input
   channels carry sparse ±1 pulses; each output must hold the sign of its channel's last pulse.
   Checkpoints are kept along training.
2. Fixed points under zero input (`analyse_fixed_points`), from states sampled along
   trajectories: a trained network has 2³ = 8 stable points (the memories) and saddles between
   them. They are drawn in a PCA projection of the trajectories, with the unstable modes.
3. The sNTK over the checkpoints (`sntk_over_checkpoints`): effective rank, top eigenvalues and
   alignment, with the bifurcations of the zero-input dynamics tracked over the same checkpoints
   (`ds.track_bifurcations`) marked.
"""

import argparse
import pathlib
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import diffrax_sntk as ds  # noqa: E402
from diffrax_sntk import analyse_fixed_points, sample_states, sntk_over_checkpoints  # noqa: E402
from diffrax_sntk.plotting import (  # noqa: E402
    plot_eigenvalues,
    plot_fixed_points,
    plot_sntk_over_training,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BITS = 3
DT = 0.25  # integration step and input grid


def flip_flop_data(rng, trials, duration, pulse_prob=0.04):
    """Inputs on the grid `0, DT, ..., duration` (pulses of width 2·DT) and targets at `ts`.

    Every channel gets a pulse in its first time unit, so the target (the sign of the last
    pulse) is defined after it; before, the target is 0.
    """
    its = np.arange(0.0, duration + DT / 2, DT)
    n = its.shape[0]
    inputs = np.zeros((trials, n, BITS))
    for b in range(trials):
        for c in range(BITS):
            onsets = list(np.where(rng.random(n - 3) < pulse_prob)[0] + 1)
            onsets = sorted(set(onsets + [int(rng.integers(1, int(1 / DT)))]))
            for i in onsets:
                inputs[b, i : i + 2, c] = rng.choice([-1.0, 1.0])
    # The target at time t holds the sign of the last pulse that has started by t.
    held = np.zeros_like(inputs)
    state = np.zeros((trials, BITS))
    for i in range(n):
        state = np.where(inputs[:, i] != 0, inputs[:, i], state)
        held[:, i] = state
    # Observed every 2·DT; a pulse starting at grid point i ends at i + 2, so the target lags the
    # held sign by two grid points (the network sees the whole pulse before it must switch).
    obs = np.arange(2, n, 2)
    ts, targets = its[obs], held[:, obs - 2]
    return its, inputs, ts, targets


def make_problem(its, inputs, ts, hidden):
    return ds.TrajectoryProblem(
        jnp.asarray(ts), jnp.zeros((inputs.shape[0], hidden)), jnp.asarray(inputs),
        input_ts=jnp.asarray(its), solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.ConstantStepSize(), dt0=DT,
    )


@eqx.filter_jit
def train_step(model, opt_state, problem, targets, opt):
    def loss_fn(m):
        ys = ds.simulate(m, problem, space="output")
        return jnp.mean((ys - targets) ** 2)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def checkpoint_schedule(steps, num):
    """`num` checkpoint steps in `[0, steps]`, denser early in training (where the fixed-point
    structure forms and the sNTK changes fastest)."""
    sched = np.unique(np.round(steps * np.linspace(0.0, 1.0, num) ** 2).astype(int))
    return sched


def train(hidden, steps, batch, duration, checkpoints, seed=0):
    rng = np.random.default_rng(seed)
    its, inputs, ts, targets = flip_flop_data(rng, 8 * batch, duration)
    model = ds.CTRNN(hidden, input_size=BITS, output_size=BITS, key=jr.PRNGKey(seed), gain=0.9)
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, steps, alpha=0.1))
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    schedule = set(checkpoint_schedule(steps, checkpoints).tolist())
    saved, saved_steps, losses = [model], [0], []
    for step in range(1, steps + 1):
        idx = rng.choice(inputs.shape[0], batch, replace=False)
        problem = make_problem(its, inputs[idx], ts, hidden)
        model, opt_state, loss = train_step(model, opt_state, problem, jnp.asarray(targets[idx]),
                                            opt)
        losses.append(float(loss))
        if step % 250 == 0:
            print(f"  step {step}: loss {np.mean(losses[-50:]):.4f}", flush=True)
        if step in schedule:
            saved.append(model)
            saved_steps.append(step)
    return model, saved, np.asarray(saved_steps), np.asarray(losses)


def zero_input_field(x, model):
    return model(0.0, x, jnp.zeros(BITS, x.dtype))


def main(smoke: bool = False, out: str | None = None, seed: int = 0) -> dict:
    if smoke:
        hidden, steps, batch, duration, ncheck, nstarts = 8, 4, 4, 4.0, 3, 16
    else:
        hidden, steps, batch, duration, ncheck, nstarts = 64, 1000, 32, 20.0, 16, 512
    if out is None:
        out_dir = (pathlib.Path(tempfile.mkdtemp()) if smoke
                   else pathlib.Path(__file__).resolve().parents[1] / "docs/figures")
    else:
        out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, checkpoints, ckpt_steps, losses = train(hidden, steps, batch, duration, ncheck, seed)
    t_train = time.perf_counter() - t0
    # The checkpoints, to redo the analysis without training: `eqx.tree_deserialise_leaves`.
    eqx.tree_serialise_leaves(out_dir / "flip_flop_checkpoints.eqx", checkpoints)
    print(f"trained N = {hidden} for {steps} steps in {t_train:.1f} s; "
          f"loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.4f}")

    t1 = time.perf_counter()
    # Trajectories of held-out trials: the PCA basis and the starts of the fixed-point search.
    its, inputs, ts, _ = flip_flop_data(np.random.default_rng(seed + 1), 16, duration)
    test = make_problem(its, inputs, ts, hidden)
    ys = ds.simulate(model, test)
    starts = sample_states(ys, nstarts, key=jr.PRNGKey(seed), noise_scale=0.05)
    fps = analyse_fixed_points(model, starts, inputs=jnp.zeros(BITS), q_threshold=1e-4)
    kept = fps.kept_points()
    n_stable, n_saddle = int(fps.num_stable), int(fps.num_saddles)
    n_slow = int(np.sum(np.asarray(kept.slow_point)))
    nu = np.asarray(kept.num_unstable)
    print(f"zero input: {int(fps.num_kept)} distinct points from {nstarts} starts: "
          f"{n_stable} stable, {n_saddle} saddles, {n_slow} slow points "
          f"(unstable dimensions of the unstable points: {sorted(nu[nu > 0].tolist())})")

    fig = plt.figure(figsize=(10, 4))
    plot_fixed_points(fps, ys, ax=fig.add_subplot(1, 2, 1),
                      title="fixed points under zero input (PCA)")
    plot_eigenvalues(fps, ax=fig.add_subplot(1, 2, 2), title="Jacobian eigenvalues")
    fig.tight_layout()
    fp_path = out_dir / "flip_flop_fixed_points.png"
    fig.savefig(fp_path, dpi=120)
    plt.close(fig)

    # The sNTK on two short trials, and the zero-input equilibria tracked over the checkpoints.
    its_a, inputs_a, ts_a, _ = flip_flop_data(np.random.default_rng(seed + 2), 2, duration / 2)
    analysis_problem = make_problem(its_a, inputs_a, ts_a[1::2], hidden)
    stats = sntk_over_checkpoints(checkpoints, analysis_problem, k=4, steps=ckpt_steps,
                                  num_matvecs=16 if smoke else 32, key=jr.PRNGKey(seed))
    # The equilibrium followed from the origin, plus births and deaths of equilibria found from
    # trajectory states (seeds) at every checkpoint.
    track = ds.track_bifurcations(zero_input_field, checkpoints, jnp.zeros((1, hidden)),
                                  seed_states=starts[: 8 if smoke else 64])
    t_analysis = time.perf_counter() - t1
    steps_of = lambda p: float(np.interp(p, np.arange(len(ckpt_steps)), ckpt_steps))
    for name, group in (("bifurcation", track.bifurcations), ("birth", track.births),
                        ("death", track.deaths)):
        for b in group:
            print(f"tracked {name}: {b.kind} at checkpoint {float(b.parameter):.3f} "
                  f"(step {steps_of(float(b.parameter)):.0f})")
    codes = np.asarray(jax.tree_util.tree_leaves(track.segment_results)[0]).ravel()
    print(f"origin branch alive at the end: {bool(track.alive[-1, 0])}; "
          f"segment result codes: {sorted(set(codes.tolist()))}")
    print("sNTK effective rank over checkpoints:",
          np.array2string(np.asarray(stats.effective_rank), precision=1))

    axes = plot_sntk_over_training(stats, bifurcations=track)
    axes[0].set_title("sNTK over training (flip-flop)")
    axes[0].figure.tight_layout()
    sntk_path = out_dir / "flip_flop_sntk.png"
    axes[0].figure.savefig(sntk_path, dpi=120)
    plt.close(axes[0].figure)
    print(f"analysis (fixed points, sNTK over {len(checkpoints)} checkpoints, tracking) took "
          f"{t_analysis:.1f} s; wrote {fp_path} and {sntk_path}")
    return dict(
        analysis=fps, stats=stats, track=track, num_stable=n_stable, num_saddles=n_saddle,
        figures=[fp_path, sntk_path], train_seconds=t_train, analysis_seconds=t_analysis,
        losses=losses,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="fast run for the test suite")
    parser.add_argument("--out", default=None, help="folder for the figures")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    main(smoke=ns.smoke, out=ns.out, seed=ns.seed)
