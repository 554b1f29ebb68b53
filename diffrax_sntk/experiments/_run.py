r"""Set-up and training of the student–teacher experiment, vmapped over seeds and learning rates.

Everything here is a pure JAX function of a seed's key and the (static) configuration, so the
seeds of one configuration — and the learning rates of its optimizer comparison — run as one
compiled program per optimizer (`jax.vmap` over learning rates inside `jax.vmap` over seeds).
Only the public API of `diffrax_sntk` is used, besides its shared helper `participation_ratio`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import diffrax_sntk as ds

from .._misc import participation_ratio
from .._replay import record_steps
from ._config import StudentTeacherConfig
from ._tasks import task_param_spec, task_setup

__all__ = ["Setup", "setup", "make_problem", "param_spec", "train", "evaluate", "OPTIMIZERS"]

# Baselines of criterion C5, then the natural gradient at ranks 1, 2, 4.
OPTIMIZERS = ("sgd", "sgd_clip", "adam", "ng1", "ng2", "ng4")
# A run whose parameters leave this box (or turn non-finite) has diverged: it is frozen and its
# loss is recorded as inf from the next step on. The CTRNN's states stay bounded, so its loss never
# overflows; instead weights far beyond the teacher's (largest |W_ij| ≈ 1.6) make the dynamics
# stiff and stall the adaptive solver (Adam at rate 0.5 took minutes per step with a bound of 100).
_PARAM_BOUND = 10.0
_MAX_STEPS = 16384


class Setup(NamedTuple):
    teacher: ds.CTRNN
    student: ds.CTRNN
    y0: jax.Array
    target: jax.Array


def _inputs(cfg: StudentTeacherConfig):
    half = cfg.trials // 2
    mags = np.linspace(0.5, 2.0, max(half, 1))
    amps = np.concatenate([-mags[::-1], mags])[: cfg.trials]
    if amps.shape[0] < cfg.trials:
        amps = np.concatenate([amps, mags[: cfg.trials - amps.shape[0]]])
    input_ts = np.linspace(0.0, cfg.t_end, 4 * int(cfg.t_end / cfg.pulse_end) + 1)
    inputs = np.where(input_ts[None, :, None] <= cfg.pulse_end, amps[:, None, None], 0.0)
    return jnp.asarray(input_ts), jnp.asarray(inputs)


def observation_times(cfg: StudentTeacherConfig) -> jax.Array:
    return jnp.linspace(cfg.first_time, cfg.t_end, cfg.times)


def make_problem(cfg: StudentTeacherConfig, y0, ts=None) -> ds.TrajectoryProblem:
    """The trials of one seed (`y0`: `(trials, hidden)`), observed at `ts` (default: the
    configuration's observation times)."""
    input_ts, inputs = _inputs(cfg)
    ts = observation_times(cfg) if ts is None else ts
    return ds.TrajectoryProblem(ts, y0, inputs, input_ts=input_ts, rtol=cfg.rtol, atol=cfg.atol,
                                max_steps=_MAX_STEPS)


def _template(cfg: StudentTeacherConfig) -> ds.CTRNN:
    return ds.CTRNN(cfg.hidden, input_size=1, output_size=cfg.outputs, key=jr.PRNGKey(0))


def _unit(v):
    return v / jnp.linalg.norm(v)


def _random_bulk(key, q, gain, n):
    proj = jnp.eye(n) - jnp.outer(q, q)
    return proj @ ((gain / jnp.sqrt(n)) * jr.normal(key, (n, n))) @ proj


def setup(cfg: StudentTeacherConfig, key) -> Setup:
    """Teacher, student, initial states and the teacher's outputs for one seed (pure; vmappable
    over `key`)."""
    n = cfg.hidden
    kq, kbulk, ks, ksb, ku, ky0 = jr.split(key, 6)
    template = _template(cfg)
    readout = jnp.eye(cfg.outputs, n)

    def make(W, U):
        return eqx.tree_at(lambda m: (m.W, m.U, m.C, m.b, m.d), template,
                           (W, U, readout, jnp.zeros(n), jnp.zeros(cfg.outputs)))

    if cfg.task != "pitchfork":
        # The fold and Hopf tasks draw their own weights; y0 comes from the same key as above.
        teacher, student = task_setup(cfg, jr.fold_in(key, 17), template)
    elif cfg.student == "shared":
        basis, _ = jnp.linalg.qr(jr.normal(kq, (n, n)))
        q = basis[:, 0]
        radii = jnp.linspace(cfg.bulk_radius, -cfg.bulk_radius, n - 1)
        bulk = basis[:, 1:] @ jnp.diag(radii) @ basis[:, 1:].T
        teacher = make(cfg.teacher_gain * jnp.outer(q, q) + bulk, q[:, None])
        student = make(cfg.student_gain * jnp.outer(q, q) + bulk, q[:, None])
    else:
        q = _unit(jr.normal(kq, (n,)))
        W_T = cfg.teacher_gain * jnp.outer(q, q) + _random_bulk(kbulk, q, cfg.bulk_gain, n)
        teacher = make(W_T, q[:, None])
        q_s = _unit(jr.normal(ks, (n,)))
        W_S = cfg.student_gain * jnp.outer(q_s, q_s) + _random_bulk(ksb, q_s, cfg.bulk_gain, n)
        student = make(W_S, _unit(jr.normal(ku, (n,)))[:, None])
    # Diverse initial states make the sNTK high-rank far from the bifurcation; the input pulses
    # then decide the teacher's basin.
    y0 = cfg.initial_spread * jr.normal(ky0, (cfg.trials, n))
    target = ds.simulate(teacher, make_problem(cfg, y0), space="output")
    return Setup(teacher, student, y0, target)


def canonical(cfg: StudentTeacherConfig, setup: bool = False) -> StudentTeacherConfig:
    """`cfg` with the fields that a compiled program does not read fixed (seed and learning
    rate are traced values; the gains and bulks only enter `setup`), so that runs share
    compilations."""
    cfg = dataclasses.replace(cfg, seed=0, learning_rate=1.0, learning_rates=(1.0,))
    if setup:
        return cfg
    return dataclasses.replace(cfg, teacher_gain=1.0, student_gain=1.0, bulk_radius=0.0,
                               bulk_gain=0.0, initial_spread=1.0,
                               teacher_bias=None, teacher_frequency=None,
                               student_frequency=None)


def setups(cfg: StudentTeacherConfig, seeds) -> Setup:
    """`setup` for every seed, stacked along a leading axis."""
    keys = jnp.stack([jr.PRNGKey(int(s)) for s in seeds])
    return _setups(canonical(cfg, setup=True), keys)


@functools.partial(jax.jit, static_argnums=0)
def _setups(cfg, keys):
    return jax.vmap(lambda k: setup(cfg, k))(keys)


def param_spec(cfg: StudentTeacherConfig, model: ds.CTRNN):
    """`filter_spec` of the trained fields."""
    if cfg.task != "pitchfork":
        return task_param_spec(cfg, model)
    spec = jax.tree_util.tree_map(lambda _: False, model)
    getters = {"W": lambda m: m.W, "b": lambda m: m.b, "U": lambda m: m.U}
    for name in cfg.trained:
        spec = eqx.tree_at(getters[name], spec, True)
    return spec


def mse(model, problem, target):
    return jnp.mean((ds.simulate(model, problem, space="output") - target) ** 2)


def make_optimizer(name: str, learning_rate, cfg: StudentTeacherConfig, num_outputs: int):
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "sgd_clip":
        return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(learning_rate))
    if name == "adam":
        return optax.adam(learning_rate)
    if name.startswith("ng"):
        # loss_hessian: the MSE's Hessian in output space is (2 / #outputs) I.
        return ds.low_rank_natural_gradient(
            learning_rate, rank=int(name[2:]), refresh_every=cfg.refresh_every,
            loss_hessian=2.0 / num_outputs,
        )
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def ng_name(cfg: StudentTeacherConfig) -> str:
    return f"ng{cfg.rank}"


def _tree_where(cond, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond, a, b), new, old)


def _train_one(cfg, name, lr, student, y0, target):
    problem = make_problem(cfg, y0)
    spec = param_spec(cfg, student)
    params, static = eqx.partition(student, spec)
    loss_of = lambda p: mse(eqx.combine(p, static), problem, target)
    opt = make_optimizer(name, lr, cfg, target.size)
    # Built inside the vmapped function, so the step counter stays unbatched and the natural
    # gradient's refresh remains a real `lax.cond` (not a select that refreshes every step).
    opt_state = opt.init(params)

    def step(carry, _):
        p, s, dead = carry
        p_new, s_new, loss = _step(name, opt, spec, p, s, static, problem, target)
        leaves = jax.tree_util.tree_leaves(p_new)
        bad = ~jnp.isfinite(loss) | ~jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(x) & (jnp.abs(x) <= _PARAM_BOUND)) for x in leaves]))
        dead_new = dead | bad
        record = (jnp.where(dead, jnp.inf, loss), p)
        # The optimizer state is not frozen: its step counter must stay unbatched (see above).
        return (_tree_where(dead_new, p, p_new), s_new, dead_new), record

    (p_last, s_last, dead), (losses, history) = jax.lax.scan(
        step, (params, opt_state, jnp.asarray(False)), None, length=cfg.steps
    )
    last = jnp.where(dead, jnp.inf, loss_of(p_last))
    losses = jnp.concatenate([losses, last[None]])
    history = jax.tree_util.tree_map(lambda h, x: jnp.concatenate([h, x[None]]), history, p_last)
    # The natural gradient's failed refreshes (kept eigenpairs) are reported with the run.
    if isinstance(s_last, ds.LowRankNaturalGradientState):
        failures = s_last.num_refresh_failures
    else:
        failures = jnp.zeros((), jnp.int32)
    return losses, history, failures


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train(cfg, name, lrs, students, y0s, targets):
    # Seeds are vmapped, rates run one after another: a vmapped adaptive solve takes as many
    # steps as its stiffest member, and the stiff members (weights grown by a large rate) are
    # those of one rate; batching the rates would make every rate pay for the stiffest one.
    per_rate = lambda lr: jax.vmap(lambda st, y0, tg: _train_one(cfg, name, lr, st, y0, tg))(
        students, y0s, targets)
    losses, history, failures = jax.lax.map(per_rate, lrs)
    swap = lambda x: jnp.swapaxes(x, 0, 1)
    return swap(losses), jax.tree_util.tree_map(swap, history), swap(failures)


def train_with_refresh_failures(cfg: StudentTeacherConfig, name: str, learning_rates,
                                batch: Setup):
    """`train`, plus the natural gradient's count of failed eigenbasis refreshes per run
    `(seeds, rates)` (zeros for the other optimizers): `(losses, history, failures)`."""
    lrs = jnp.asarray(learning_rates, dtype=jnp.result_type(float))
    return _train(canonical(cfg), name, lrs, batch.student, batch.y0, batch.target)


def train(cfg: StudentTeacherConfig, name: str, learning_rates, batch: Setup):
    """Train every seed of `batch` with optimizer `name` at every learning rate.

    **Returns:** `(losses, history)`: losses `(seeds, rates, steps + 1)` (inf once diverged) and
    the trained parameters at every step `(seeds, rates, steps + 1, ...)` (a filtered CTRNN).
    """
    losses, history, _ = train_with_refresh_failures(cfg, name, learning_rates, batch)
    return losses, history


def _evaluate_one(cfg, params, student, y0, top_k, key):
    problem = make_problem(cfg, y0)
    spec = param_spec(cfg, student)
    _, static = eqx.partition(student, spec)
    model = eqx.combine(params, static)
    J = ds.jacobian_operator(model, problem, filter_spec=spec)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    if use_exact(cfg, num_params):
        jm = J.as_matrix()
        # The nonzero spectrum of Θ = J Jᵀ is that of the small Gram matrix JᵀJ.
        s = jnp.clip(jnp.linalg.eigvalsh(jm.T @ jm)[::-1], 0.0, None)
        return participation_ratio(s), s[:top_k]
    theta = ds.sntk_operator(model, problem, filter_spec=spec)
    est = ds.effective_rank(theta, key=key)
    return est.estimate, jnp.full((top_k,), jnp.nan)


def use_exact(cfg: StudentTeacherConfig, num_params: int) -> bool:
    """Exact spectra (JᵀJ) below N = 64, the matrix-free estimators from N = 64 on (the
    protocol's rule); `pr_method` overrides."""
    if cfg.pr_method == "auto":
        return cfg.hidden < 64
    return cfg.pr_method == "exact"


@functools.partial(jax.jit, static_argnums=(0,))
def _evaluate(cfg, history, valid, students, y0s, keys):
    # One evaluation at a time (`lax.map` over seeds, rates and evaluations): each J is a vmapped
    # block of tangent solves, and batching several models would make every one of them take the
    # steps of the stiffest. Evaluations of a diverged run (`valid` false) are skipped.
    seeds, rates, evals = valid.shape
    flat = jax.tree_util.tree_map(lambda h: h.reshape((-1,) + h.shape[3:]), history)
    seed_of = jnp.repeat(jnp.arange(seeds), rates * evals)
    keys = jax.vmap(lambda k: jr.split(k, rates * evals))(keys).reshape(-1, keys.shape[-1])
    top_k = cfg.top_k

    def one(args):
        p, ok, i, key = args
        st = jax.tree_util.tree_map(lambda x: x[i], students)
        skip = lambda: (jnp.asarray(jnp.nan, y0s.dtype), jnp.full((top_k,), jnp.nan, y0s.dtype))
        run = lambda: _evaluate_one(cfg, p, st, y0s[i], top_k, key)
        return jax.lax.cond(ok, run, skip)

    pr, top = jax.lax.map(one, (flat, valid.reshape(-1), seed_of, keys))
    return pr.reshape(seeds, rates, evals), top.reshape(seeds, rates, evals, top_k)


def _leading(tree):
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def evaluate(cfg: StudentTeacherConfig, history, batch: Setup, eval_steps, seeds, losses):
    """Participation ratio and top eigenvalues of the state-space sNTK at `eval_steps` of every
    (seed, rate) history whose loss there is finite (NaN elsewhere: the run had diverged).
    **Returns:** `(pr, top)` shaped `(seeds, rates, evals)` and `(seeds, rates, evals, top_k)`
    (top is NaN on the matrix-free path)."""
    idx = jnp.asarray(eval_steps)
    sub = jax.tree_util.tree_map(lambda h: h[:, :, idx], history)
    valid = jnp.isfinite(jnp.asarray(losses)[:, :, idx])
    keys = jnp.stack([jr.fold_in(jr.PRNGKey(int(s)), 7) for s in seeds])
    return _evaluate(canonical(cfg), sub, valid, batch.student, batch.y0, keys)


def time_steps(cfg: StudentTeacherConfig, batch: Setup, seed_index: int = 0, *,
               learning_rate: float | None = None, solver_steps: bool = False):
    """Wall time of each compiled training step of SGD and of the natural gradient (the
    configuration's rank) for one seed, refresh steps included.

    **Arguments:**
    - `learning_rate`: the rate to time at; `None` uses `cfg.learning_rate`. The sweep times at
      each rate of its grid (protocol amendment of session 9); before that it timed at
      `cfg.learning_rate` of the group configuration, the default 0.5, which no run used.
    - `solver_steps`: also record, before each step and outside the timed interval, the accepted
      solver steps of the forward solve at that optimizer's current parameters (the largest over
      the trials). Each optimizer follows its own trajectory, and a step's cost follows the
      solver steps its parameters need (see "What C6 measures" in docs/fold_hopf_tasks.md).

    **Returns:** `{"sgd": [...], "ng": [...], "learning_rate": rate}`, the times in seconds,
    the compiling first call dropped; with `solver_steps`, also `"sgd_solver_steps"` and
    `"ng_solver_steps"`, aligned with the times.

    The two optimizers' steps alternate (SGD step k, then NG step k), so both are timed under
    the same machine load. Timed as two blocks, one after the other, the ratio (C6) of one
    configuration ranged from 1.11× to 3.35× over five invocations while other jobs shared the
    cores (`benchmarks/c6_timing.py` compares the two ways).
    """
    rate = float(cfg.learning_rate if learning_rate is None else learning_rate)
    if not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"`learning_rate` must be a finite positive number, got {rate!r}.")
    one = jax.tree_util.tree_map(lambda x: x[seed_index], batch)
    problem = make_problem(cfg, one.y0)
    spec = param_spec(cfg, one.student)
    params, static = eqx.partition(one.student, spec)
    lr = jnp.asarray(rate, dtype=jnp.result_type(float))
    names = {"sgd": "sgd", "ng": ng_name(cfg)}
    opts = {label: make_optimizer(name, lr, cfg, one.target.size) for label, name in names.items()}
    state = {label: (params, opts[label].init(params)) for label in names}
    times: dict[str, list[float]] = {label: [] for label in names}
    counts: dict[str, list[int]] = {label: [] for label in names}
    running = set(names)
    for _ in range(cfg.steps + 1):
        for label in [x for x in names if x in running]:
            p, s = state[label]
            if solver_steps:
                counts[label].append(int(_solver_steps(p, static, problem)))
            t = time.perf_counter()
            p_new, s_new, loss = _timed_step(canonical(cfg), names[label], lr, p, s, static,
                                             problem, one.target)
            jax.block_until_ready(loss)
            times[label].append(time.perf_counter() - t)
            leaves = jax.tree_util.tree_leaves(p_new)
            if not np.isfinite(float(loss)) or not all(
                    bool(jnp.all(jnp.abs(x) <= _PARAM_BOUND)) for x in leaves):
                running.discard(label)  # diverged (as in `train`): its steps so far are the sample
            else:
                state[label] = (p_new, s_new)
    out: dict = {label: t[1:] for label, t in times.items()}
    if solver_steps:
        out.update({f"{label}_solver_steps": c[1:] for label, c in counts.items()})
    out["learning_rate"] = rate
    return out


@eqx.filter_jit
def _solver_steps(p, static, problem):
    # Accepted steps of the forward solve at these parameters, the largest over the trials.
    return jnp.max(record_steps(p, static, problem)[1])


@eqx.filter_jit
def _timed_step(cfg, name, lr, p, s, static, problem, target):
    # One training step as a user would write it: loss and gradients, the Jacobian operator at
    # the current model for the natural gradient, the optimizer update.
    opt = make_optimizer(name, lr, cfg, target.size)
    spec = param_spec(cfg, eqx.combine(p, static))
    return _step(name, opt, spec, p, s, static, problem, target)


def _step(name, opt, spec, p, s, static, problem, target):
    """One step: MSE and its gradient, the output-space Jacobian operator at the current model
    for the natural gradient, the optimizer update. **Returns:** `(params, state, loss)`."""
    loss, grads = jax.value_and_grad(lambda q: mse(eqx.combine(q, static), problem, target))(p)
    if name.startswith("ng"):
        J = ds.jacobian_operator(eqx.combine(p, static), problem, space="output",
                                 filter_spec=spec)
        updates, s = opt.update(grads, s, p, jacobian=J)
    else:
        updates, s = opt.update(grads, s, p)
    return eqx.apply_updates(p, updates), s, loss
