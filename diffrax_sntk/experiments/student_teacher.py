r"""The paper's student–teacher experiment (arXiv 2605.12763), as a reusable function.

A *teacher* CTRNN τẋ = −x + W tanh(x) + U u(t) has passed a pitchfork: W = g_T q qᵀ + R with
g_T > 1 along a unit direction q and the rest R of spectral radius < 1, so the origin is a saddle
and two stable fixed points ±x* sit on either side of it. Input pulses along q push each trial
into one basin, where it stays: the teacher remembers the sign of the pulse. The readout shows a
few units. A *student* with the same architecture starts *before* the bifurcation (g_S < 1: one
stable fixed point, pulses decay) and learns W by gradient descent on the teacher's outputs. To
fit, it must learn the pitchfork. Along training we record the loss, the sNTK spectrum (exactly,
from the eigenvalues of JᵀJ), the leading Jacobian eigenvalue at the origin, and the bifurcations
found by `ds.track_bifurcations` over the saved checkpoints; at the first bifurcation, the
channel split (`ds.bifurcation_channels`) and the restricted loss landscape next to the pitchfork
normal form (`ds.restricted_landscape`). The same run is repeated with
`ds.low_rank_natural_gradient` at the same learning rate.

Only W is trained and the bias is zero, so the autonomous dynamics keep the Z2 symmetry
x ↦ −x and the learned bifurcation is a genuine pitchfork (not an imperfect fold).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffrax_sntk as ds

__all__ = [
    "StudentTeacherConfig",
    "run_student_teacher",
    "REPORT_SCHEMA",
    "Interrupted",
]

REPORT_SCHEMA: dict[str, str] = {
    "schema_version": "integer, currently 1",
    "config": "the StudentTeacherConfig used (all fields)",
    "steps": "list of training steps 0..steps (loss curves are indexed by these)",
    "loss_sgd": "training loss (MSE on the readout) before each SGD step, and after the last",
    "loss_natgrad": "the same for the low-rank natural gradient at the same learning rate",
    "eval_steps": "steps at which the sNTK and Jacobian spectra were evaluated (SGD run)",
    "effective_rank": "participation ratio (tr Θ)²/tr Θ² of the state-space sNTK at eval_steps",
    "top_eigenvalues": "top sNTK eigenvalues at eval_steps (list of lists, descending)",
    "leading_eigenvalue": "largest real part of the Jacobian eigenvalues at the origin",
    "bifurcations": "list of {kind, step (fractional), checkpoint_index, normal_form, direction}",
    "first_bifurcation_step": "fractional training step of the first detected bifurcation, or null",
    "effective_rank_min_step": "eval step at which the participation ratio is smallest",
    "effective_rank_drop": "max participation ratio before the minimum / the minimum",
    "effective_rank_min_offset_percent": "|min step − bifurcation step| / steps × 100",
    "channel": "at the weights interpolated to the first bifurcation: energy_fraction, alignment "
    "(|cos| of Θ's top eigenvector with the channel), dominant_overlap (‖Π_U u1‖: how much of the "
    "dominant parameter direction lies in the channel), amplification, checkpoint_step "
    "(fractional)",
    "landscape": "restricted loss landscape s ↦ L(θ + s u1): s, loss, prediction, r2",
    "max_loss_increase": "per optimizer: the largest L(k+1)/L(k) − 1 over consecutive steps",
    "sgd_spike_factor": "max over steps of L(k) / min_{j<k} L(j) for SGD (≥ 10 is a spike)",
    "step_time_seconds": "per optimizer: median wall time per jitted training step",
    "targets": "each quantitative target with its measured value and whether it is met",
    "wall_time_seconds": "total wall time of the run",
}


class Interrupted(RuntimeError):
    """Raised when a run stops at `stop_after` (used to test `--resume`)."""


@dataclasses.dataclass(frozen=True)
class StudentTeacherConfig:
    """Sizes and hyperparameters of the experiment. `preset("quick" | "default" | "full")`."""

    hidden: int = 10
    outputs: int = 2
    trials: int = 8
    times: int = 20
    t_end: float = 20.0
    pulse_end: float = 1.0
    teacher_gain: float = 1.6
    student_gain: float = 0.5
    bulk_radius: float = 0.3
    initial_spread: float = 1.0
    learning_rate: float = 0.5
    steps: int = 120
    eval_every: int = 1
    rank: int = 2
    refresh_every: int = 5
    top_k: int = 5
    landscape_points: int = 21
    checkpoint_every: int = 20
    rtol: float = 1e-6
    atol: float = 1e-8
    seed: int = 0

    @classmethod
    def preset(cls, name: str, **overrides) -> "StudentTeacherConfig":
        presets = {
            "quick": dict(hidden=4, trials=4, times=12, steps=60, eval_every=3,
                          landscape_points=13),
            "default": {},
            "full": dict(hidden=32, trials=32, times=50, steps=600, eval_every=5, rank=4,
                         refresh_every=10, checkpoint_every=50),
        }
        if name not in presets:
            raise ValueError(f"`preset` must be one of {sorted(presets)}, got {name!r}.")
        return dataclasses.replace(cls(), **{**presets[name], **overrides})


# ---------------------------------------------------------------------------------------------
# Set-up


def _setup(cfg: StudentTeacherConfig):
    n = cfg.hidden
    key = jr.PRNGKey(cfg.seed)
    kq, kr = jr.split(key)
    basis, _ = jnp.linalg.qr(jr.normal(kq, (n, n)))
    q = basis[:, 0]
    bulk = basis[:, 1:] @ jnp.diag(jnp.linspace(cfg.bulk_radius, -cfg.bulk_radius, n - 1)) @ (
        basis[:, 1:].T
    )

    def make(gain):
        m = ds.CTRNN(n, input_size=1, output_size=cfg.outputs, key=kr)
        readout = jnp.eye(cfg.outputs, n)
        return eqx.tree_at(
            lambda m: (m.W, m.U, m.C, m.b, m.d),
            m,
            (gain * jnp.outer(q, q) + bulk, q[:, None], readout, jnp.zeros(n),
             jnp.zeros(cfg.outputs)),
        )

    teacher, student = make(cfg.teacher_gain), make(cfg.student_gain)
    half = cfg.trials // 2
    mags = jnp.linspace(0.5, 2.0, max(half, 1))
    amps = jnp.concatenate([-mags[::-1], mags])[: cfg.trials]
    if amps.shape[0] < cfg.trials:
        amps = jnp.concatenate([amps, mags[: cfg.trials - amps.shape[0]]])
    input_ts = jnp.linspace(0.0, cfg.t_end, 4 * int(cfg.t_end / cfg.pulse_end) + 1)
    inputs = jnp.where(input_ts[None, :, None] <= cfg.pulse_end, amps[:, None, None], 0.0)
    ts = jnp.linspace(cfg.t_end / cfg.times, cfg.t_end, cfg.times)
    # Diverse initial states make the sNTK high-rank far from the bifurcation; the pulses along q
    # then decide the basin.
    y0 = cfg.initial_spread * jr.normal(jr.fold_in(key, 1), (cfg.trials, n))
    problem = ds.TrajectoryProblem(
        ts, y0, inputs, input_ts=input_ts, rtol=cfg.rtol, atol=cfg.atol
    )
    target = ds.simulate(teacher, problem, space="output")
    # Train W only (bias fixed at zero keeps the Z2 symmetry of the autonomous dynamics).
    filter_spec = eqx.tree_at(lambda m: m.W, jax.tree_util.tree_map(lambda _: False, student),
                              True)
    return teacher, student, problem, target, filter_spec


def _vector_field(x, W):
    # Autonomous student dynamics (u = 0, b = 0, τ = 1) as a function of the trained weights.
    return -x + W @ jnp.tanh(x)


# ---------------------------------------------------------------------------------------------
# Training state and checkpoints


class _RunState(eqx.Module):
    W_sgd: jax.Array
    W_ng: jax.Array
    opt_state: Any
    loss_sgd: jax.Array
    loss_ng: jax.Array
    eval_W: jax.Array
    eval_pr: jax.Array
    eval_top: jax.Array
    eval_lead: jax.Array


def _initial_state(cfg, student, opt, filter_spec) -> _RunState:
    n_eval = cfg.steps // cfg.eval_every + 1
    params = eqx.filter(student, filter_spec)
    nan = lambda *s: jnp.full(s, jnp.nan)
    return _RunState(
        W_sgd=student.W, W_ng=student.W, opt_state=opt.init(params),
        loss_sgd=nan(cfg.steps + 1), loss_ng=nan(cfg.steps + 1),
        eval_W=jnp.zeros((n_eval, cfg.hidden, cfg.hidden)), eval_pr=nan(n_eval),
        eval_top=nan(n_eval, cfg.top_k), eval_lead=nan(n_eval),
    )


def _save(out_dir, state: _RunState, meta: dict) -> None:
    tmp = os.path.join(out_dir, "checkpoint.eqx.tmp")
    eqx.tree_serialise_leaves(tmp, state)
    os.replace(tmp, os.path.join(out_dir, "checkpoint.eqx"))
    with open(os.path.join(out_dir, "checkpoint.json.tmp"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(out_dir, "checkpoint.json.tmp"),
               os.path.join(out_dir, "checkpoint.json"))


def _load(out_dir, like: _RunState):
    with open(os.path.join(out_dir, "checkpoint.json")) as f:
        meta = json.load(f)
    state = eqx.tree_deserialise_leaves(os.path.join(out_dir, "checkpoint.eqx"), like)
    return state, meta


# ---------------------------------------------------------------------------------------------
# The run


# Jitted steps live at module level and take everything as arguments, so repeated runs with
# the same shapes (tests, --resume) reuse one compilation.


def _with_W(student, W):
    return eqx.tree_at(lambda m: m.W, student, W)


def _loss(model, problem, target):
    return jnp.mean((ds.simulate(model, problem, space="output") - target) ** 2)


@functools.lru_cache(maxsize=8)
def _natural_gradient(learning_rate, rank, refresh_every, hessian_weight):
    return ds.low_rank_natural_gradient(
        learning_rate, rank=rank, refresh_every=refresh_every, loss_hessian=hessian_weight
    )


@eqx.filter_jit
def _sgd_step(W, student, problem, target, lr):
    loss, grad = jax.value_and_grad(lambda w: _loss(_with_W(student, w), problem, target))(W)
    return W - lr * grad, loss


@eqx.filter_jit
def _ng_step(W, opt_state, student, problem, target, filter_spec, opt):
    model = _with_W(student, W)
    params, static = eqx.partition(model, filter_spec)
    loss, grads = jax.value_and_grad(
        lambda p: _loss(eqx.combine(p, static), problem, target)
    )(params)
    J = ds.jacobian_operator(model, problem, space="output", filter_spec=filter_spec)
    updates, opt_state = opt.update(grads, opt_state, params, jacobian=J)
    return eqx.apply_updates(params, updates).W, opt_state, loss


@eqx.filter_jit
def _evaluate(W, student, problem, filter_spec, top_k):
    J = ds.jacobian_operator(_with_W(student, W), problem, filter_spec=filter_spec)
    jm = J.as_matrix()
    # The nonzero spectrum of Θ = J Jᵀ is that of the small Gram matrix JᵀJ: exact and cheap.
    s = jnp.clip(jnp.linalg.eigvalsh(jm.T @ jm)[::-1], 0.0, None)
    pr = s.sum() ** 2 / jnp.sum(s**2)
    lead = jnp.max(jnp.real(jnp.linalg.eigvals(W - jnp.eye(W.shape[0]))))
    return pr, s[:top_k], lead


def _progress(enabled: bool):
    if enabled:
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            return Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn())
        except ImportError:  # pragma: no cover
            pass
    return None


def run_student_teacher(
    config: StudentTeacherConfig | None = None,
    out_dir: str | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the student–teacher experiment and return the report (also written to `out_dir`).

    **Arguments:**

    - `config`: a `StudentTeacherConfig` (default: the default preset).
    - `out_dir`: where `report.json`, `summary.md`, the figures and checkpoints go (`None`: no
        files).
    - `resume`: continue from `out_dir/checkpoint.*` if present (same config required).
    - `progress`: show a progress display (rich).
    - `figures`: write the PNG figures.
    - `stop_after`: raise `Interrupted` after this many optimizer steps of this call (after
        writing a checkpoint), to exercise `resume`.
    - `log`: where to print status lines.

    **Returns:**

    The report dictionary; its schema is `REPORT_SCHEMA`.
    """
    jax.config.update("jax_enable_x64", True)
    cfg = StudentTeacherConfig() if config is None else config
    t_start = time.perf_counter()
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    teacher, student, problem, target, filter_spec = _setup(cfg)
    num_out = target.size
    opt_ng = _natural_gradient(cfg.learning_rate, cfg.rank, cfg.refresh_every, 2.0 / num_out)
    lr = jnp.asarray(cfg.learning_rate)

    def model_of(W):
        return eqx.tree_at(lambda m: m.W, student, W)

    def loss_fn(model):
        return _loss(model, problem, target)

    sgd_step = lambda W: _sgd_step(W, student, problem, target, lr)
    ng_step = lambda W, s: _ng_step(W, s, student, problem, target, filter_spec, opt_ng)
    evaluate = lambda W: _evaluate(W, student, problem, filter_spec, cfg.top_k)

    state = _initial_state(cfg, student, opt_ng, filter_spec)
    meta = {"config": dataclasses.asdict(cfg), "sgd_done": 0, "ng_done": 0,
            "sgd_times": [], "ng_times": []}
    if resume and out_dir is not None and os.path.exists(os.path.join(out_dir, "checkpoint.json")):
        state, loaded = _load(out_dir, state)
        if loaded["config"] != meta["config"]:
            raise ValueError("`resume=True` but the checkpoint in `out_dir` has another config.")
        meta = loaded
        log(f"resumed: SGD at step {meta['sgd_done']}, natural gradient at {meta['ng_done']}")
    steps_this_call = 0

    def maybe_checkpoint(force=False):
        nonlocal steps_this_call
        if out_dir is None:
            return
        done = meta["sgd_done"] + meta["ng_done"]
        if force or done % cfg.checkpoint_every == 0:
            _save(out_dir, state, meta)
        if stop_after is not None and steps_this_call >= stop_after:
            _save(out_dir, state, meta)
            raise Interrupted(f"stopped after {steps_this_call} steps (stop_after)")

    bar = _progress(progress)
    if bar is not None:
        bar.start()
        task_sgd = bar.add_task("SGD + sNTK", total=cfg.steps, completed=meta["sgd_done"])
        task_ng = bar.add_task("natural gradient", total=cfg.steps, completed=meta["ng_done"])
    try:
        # --- SGD, with sNTK / spectrum evaluations every `eval_every` steps.
        W = state.W_sgd
        while meta["sgd_done"] <= cfg.steps:
            k = meta["sgd_done"]
            if k % cfg.eval_every == 0:
                pr, top, lead = evaluate(W)
                e = k // cfg.eval_every
                state = eqx.tree_at(
                    lambda s: (s.eval_W, s.eval_pr, s.eval_top, s.eval_lead), state,
                    (state.eval_W.at[e].set(W), state.eval_pr.at[e].set(pr),
                     state.eval_top.at[e].set(top), state.eval_lead.at[e].set(lead)),
                )
            t = time.perf_counter()
            W_new, loss = sgd_step(W)
            loss = float(loss)
            meta["sgd_times"].append(time.perf_counter() - t)
            state = eqx.tree_at(lambda s: s.loss_sgd, state, state.loss_sgd.at[k].set(loss))
            if k == cfg.steps:
                meta["sgd_done"] = k + 1
                break
            W = W_new if math.isfinite(loss) else W
            state = eqx.tree_at(lambda s: s.W_sgd, state, W)
            meta["sgd_done"] = k + 1
            steps_this_call += 1
            if bar is not None:
                bar.update(task_sgd, completed=meta["sgd_done"])
            maybe_checkpoint()
            if not math.isfinite(loss):
                log(f"SGD diverged at step {k}")
                meta["sgd_done"] = cfg.steps + 1
                break
        # --- Low-rank natural gradient at the same learning rate.
        W, opt_state = state.W_ng, state.opt_state
        while meta["ng_done"] <= cfg.steps:
            k = meta["ng_done"]
            t = time.perf_counter()
            W_new, opt_new, loss = ng_step(W, opt_state)
            loss = float(loss)
            meta["ng_times"].append(time.perf_counter() - t)
            state = eqx.tree_at(lambda s: s.loss_ng, state, state.loss_ng.at[k].set(loss))
            meta["ng_done"] = k + 1
            if k == cfg.steps or not math.isfinite(loss):
                break
            W, opt_state = W_new, opt_new
            state = eqx.tree_at(lambda s: (s.W_ng, s.opt_state), state, (W, opt_state))
            steps_this_call += 1
            if bar is not None:
                bar.update(task_ng, completed=meta["ng_done"])
            maybe_checkpoint()
    finally:
        if bar is not None:
            bar.stop()
    maybe_checkpoint(force=True)

    report = _analyse(cfg, state, meta, problem, student, filter_spec, loss_fn, model_of, log)
    report["wall_time_seconds"] = time.perf_counter() - t_start
    if out_dir is not None:
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(out_dir, "summary.md"), "w") as f:
            f.write(_summary(report))
        if figures:
            from ._student_teacher_figures import write_figures

            write_figures(report, out_dir)
    return report


# ---------------------------------------------------------------------------------------------
# Analysis


def _finite_list(x):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x).reshape(-1)]


def _max_increase(losses):
    losses = np.asarray(losses)
    losses = losses[np.isfinite(losses)]
    if losses.size < 2:
        return None
    return float(np.max(losses[1:] / losses[:-1] - 1.0))


def _spike_factor(losses):
    losses = np.asarray(losses)
    if not np.all(np.isfinite(losses)):
        return float("inf")
    running_min = np.minimum.accumulate(losses)
    return float(np.max(losses[1:] / running_min[:-1]))


def _analyse(cfg, state, meta, problem, student, filter_spec, loss_fn, model_of, log):
    steps = list(range(cfg.steps + 1))
    eval_steps = list(range(0, cfg.steps + 1, cfg.eval_every))
    pr = np.asarray(state.eval_pr)
    lead = np.asarray(state.eval_lead)
    report: dict[str, Any] = {
        "schema_version": 1,
        "config": dataclasses.asdict(cfg),
        "steps": steps,
        "loss_sgd": _finite_list(state.loss_sgd),
        "loss_natgrad": _finite_list(state.loss_ng),
        "eval_steps": eval_steps,
        "effective_rank": _finite_list(pr),
        "top_eigenvalues": [_finite_list(row) for row in np.asarray(state.eval_top)],
        "leading_eigenvalue": _finite_list(lead),
    }
    # Bifurcations along the SGD checkpoints.
    valid = np.isfinite(pr)
    W_seq = state.eval_W[: int(valid.sum())]
    track = ds.track_bifurcations(_vector_field, W_seq, jnp.zeros((1, cfg.hidden)))
    bifs = []
    for b in track.bifurcations:
        frac = float(b.parameter)
        bifs.append({
            "kind": b.kind, "checkpoint_index": frac, "step": frac * cfg.eval_every,
            "direction": int(b.direction),
            "normal_form": {k: (float(v) if np.ndim(v) == 0 and np.isrealobj(v) else str(v))
                            for k, v in _normal_form_dict(b.normal_form).items()},
        })
    bifs.sort(key=lambda d: d["step"])
    report["bifurcations"] = bifs
    first = bifs[0] if bifs else None
    report["first_bifurcation_step"] = None if first is None else first["step"]
    i_min = int(np.nanargmin(pr))
    report["effective_rank_min_step"] = eval_steps[i_min]
    before = pr[: i_min + 1]
    report["effective_rank_drop"] = float(np.nanmax(before) / pr[i_min])
    report["effective_rank_min_offset_percent"] = (
        None if first is None else abs(eval_steps[i_min] - first["step"]) / cfg.steps * 100
    )
    # Channel split and landscape at the first bifurcation.
    if first is not None:
        # The weights *at* the bifurcation: the tracker interpolates linearly between checkpoints.
        c = first["checkpoint_index"]
        e = min(int(np.floor(c)), len(W_seq) - 2)
        frac = c - e
        W_bif = (1 - frac) * state.eval_W[e] + frac * state.eval_W[e + 1]
        model = model_of(W_bif)
        split = ds.bifurcation_channels(
            model, problem, jnp.zeros(cfg.hidden), input=jnp.zeros(1), filter_spec=filter_spec
        )
        report["channel"] = {
            "checkpoint_step": first["step"],
            "critical_eigenvalue": float(np.real(split.critical_eigenvalue)),
            "energy_fraction": float(split.energy_fraction),
            "alignment": float(split.alignment),
            "dominant_overlap": float(split.dominant_overlap),
            "amplification": float(split.amplification),
            "warnings": list(split.warnings),
        }
        direction = split.dominant_direction
        # Scale s so that the sweep moves the critical eigenvalue by about ±0.3.
        s_max = 0.3 / max(float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(
            eqx.filter(split.eigenvalue_direction, eqx.is_inexact_array))[0])) / 2 ** 0.5, 1e-3)
        s_values = jnp.linspace(-s_max, s_max, cfg.landscape_points)
        land = ds.restricted_landscape(loss_fn, model, direction, s_values,
                                       normal_form="pitchfork", filter_spec=filter_spec)
        report["landscape"] = {
            "s": _finite_list(land.s_values), "loss": _finite_list(land.loss),
            "prediction": _finite_list(land.predicted), "r2": float(land.r_squared),
        }
    else:
        report["channel"] = None
        report["landscape"] = None
    report["max_loss_increase"] = {
        "sgd": _max_increase(state.loss_sgd), "natgrad": _max_increase(state.loss_ng),
    }
    report["sgd_spike_factor"] = _spike_factor(np.asarray(state.loss_sgd))
    report["step_time_seconds"] = {
        "sgd": statistics.median(meta["sgd_times"][1:] or meta["sgd_times"]),
        "natgrad": statistics.median(meta["ng_times"][1:] or meta["ng_times"]),
    }
    report["targets"] = _targets(report)
    return report


def _normal_form_dict(nf) -> dict:
    out = {}
    for field in dataclasses.fields(nf) if dataclasses.is_dataclass(nf) else []:
        out[field.name] = getattr(nf, field.name)
    if not out:
        for name in dir(nf):
            if name.startswith("_"):
                continue
            val = getattr(nf, name)
            if isinstance(val, (str, float, int)) or (hasattr(val, "shape") and val.shape == ()):
                out[name] = val
    return out


def _targets(r) -> dict:
    def t(value, ok, goal):
        return {"value": value, "goal": goal, "met": bool(ok) if value is not None else False}

    ch, land = r.get("channel"), r.get("landscape")
    offset = r["effective_rank_min_offset_percent"]
    inc = r["max_loss_increase"]["natgrad"]
    spike = r["sgd_spike_factor"]
    return {
        "rank_min_near_bifurcation": t(offset, offset is not None and offset <= 2.0,
                                       "|argmin PR − bifurcation| ≤ 2% of steps"),
        "rank_drop": t(r["effective_rank_drop"], r["effective_rank_drop"] >= 5.0, "≥ 5×"),
        "dominant_direction_in_channel": t(
            None if ch is None else ch["dominant_overlap"],
            ch is not None and ch["dominant_overlap"] >= 0.99, "|cos| ≥ 0.99"),
        "landscape_r2": t(None if land is None else land["r2"],
                          land is not None and land["r2"] >= 0.95, "R² ≥ 0.95"),
        "natgrad_max_increase": t(inc, inc is not None and inc <= 0.05, "≤ 5%"),
        "sgd_spikes": t(spike, spike >= 10.0, "SGD spikes ≥ 10× or diverges"),
    }


def _fmt(v, spec=".3g"):
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _summary(r) -> str:
    cfg = r["config"]
    lines = [
        "# Student–teacher experiment: sNTK collapse at a learned pitchfork",
        "",
        f"CTRNN N = {cfg['hidden']}, {cfg['trials']} trials × {cfg['times']} times, "
        f"{cfg['steps']} steps at learning rate {cfg['learning_rate']} "
        f"(teacher gain {cfg['teacher_gain']}, student starts at {cfg['student_gain']}).",
        "",
        "## Bifurcations detected along SGD training",
        "",
    ]
    if r["bifurcations"]:
        for b in r["bifurcations"]:
            lines.append(f"- {b['kind']} at step {b['step']:.2f} "
                         f"(checkpoint {b['checkpoint_index']:.3f}, direction {b['direction']:+d})")
    else:
        lines.append("- none detected")
    lines += [
        "", "## Targets (measured)", "", "| target | goal | measured | met |", "|---|---|---|---|"
    ]
    for name, t in r["targets"].items():
        goal = t["goal"].replace("|", "\\|")  # keep the markdown table intact
        lines.append(f"| {name} | {goal} | {_fmt(t['value'])} | {'yes' if t['met'] else 'NO'} |")
    ch = r.get("channel")
    lines += ["", "## At the bifurcation", ""]
    if ch:
        lines += [
            f"- at step {ch['checkpoint_step']:.2f} (weights interpolated between checkpoints), "
            f"critical eigenvalue "
            f"{ch['critical_eigenvalue']:.3g}",
            f"- channel energy fraction tr Θ_bif / tr Θ = {ch['energy_fraction']:.4f}",
            f"- |cos|(top eigenvector of Θ, channel) = {ch['alignment']:.4f}; "
            f"dominant direction in channel ‖Π_U u1‖ = {ch['dominant_overlap']:.4f}",
            f"- amplification λ_max(Θ_bif)/λ_max(Θ_res) = {_fmt(ch['amplification'])}",
        ]
        if ch["warnings"]:
            lines.append(f"- warnings: {'; '.join(ch['warnings'])}")
    if r.get("landscape"):
        lines.append(f"- restricted landscape vs pitchfork normal form: R² = "
                     f"{r['landscape']['r2']:.4f}")
    st = r["step_time_seconds"]
    lines += [
        "", "## Optimizers at the same learning rate", "",
        f"- largest loss increase between steps: SGD {_fmt(r['max_loss_increase']['sgd'])}, "
        f"natural gradient {_fmt(r['max_loss_increase']['natgrad'])}",
        f"- SGD spike factor (max L(k)/min_{{j<k}} L(j)): {_fmt(r['sgd_spike_factor'])}",
        f"- final loss: SGD {_fmt(r['loss_sgd'][-1])}, natural gradient "
        f"{_fmt(r['loss_natgrad'][-1])}",
        f"- median step time: SGD {st['sgd'] * 1e3:.1f} ms, natural gradient "
        f"{st['natgrad'] * 1e3:.1f} ms ({st['natgrad'] / st['sgd']:.2f}×)",
        "", f"Effective-rank minimum at step {r['effective_rank_min_step']}, drop "
        f"{r['effective_rank_drop']:.2f}× from the earlier maximum.",
        "", "Figures: `training.png`, `spectra.png`, `landscape.png`, `optimizers.png`.", "",
    ]
    return "\n".join(lines)
