r"""The pre-registered multi-seed sweep of the student–teacher experiment (`diffrax-sntk sweep`).

For each configuration group (a `StudentTeacherConfig` without seed and learning rate), all seeds
and all learning rates of the group's grid are trained as one vmapped program per optimizer; then
every run (seed, rate) is analysed on the host and written as one line of `runs.jsonl`, failures
and errors included. `summary.json` / `summary.md` aggregate the criteria per configuration
(seed dropped) with Wilson 95% intervals. The criteria are defined in
`docs/student_teacher_protocol.md`.

`runs.jsonl` lines: `config` (the run's full configuration), `criteria` (name → `{"value",
"pass", "note", ...details}`), `bifurcations` (list of `{"kind", "step", "direction"}`),
`first_bifurcation_kind`, `at_crossing`, `curves`, `error` (null or a message),
`wall_time_seconds`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np

from . import _criteria as C
from ._analysis import analyse_run, stable_learning_rate
from ._config import StudentTeacherConfig, require_x64
from ._run import (
    OPTIMIZERS,
    evaluate,
    make_problem,
    ng_name,
    param_spec,
    setups,
    time_steps,
    train_with_refresh_failures,
    use_exact,
)

__all__ = ["CRITERIA", "run_sweep", "summarise", "load_runs", "run_group"]

CRITERIA = ("C1_localisation", "C2_depth", "C3_channel", "C4_normal_form", "C5_optimizer",
            "C6_cost")
# The natural-gradient run is evaluated (PR, λ_c) at every `_NG_EVAL_STRIDE`-th evaluation.
_NG_EVAL_STRIDE = 4
# Bump when the training or evaluation programs change: older caches are then ignored.
_CACHE_VERSION = "3"


def load_runs(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run_id(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _append(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


def _task_label(config: dict) -> str:
    task = config.get("task", "pitchfork")
    return f"hopf_{config.get('hopf_frequency') or 'fixed'}" if task == "hopf" else task


# The kind of bifurcation each task is built to make training cross.
INTENDED_KIND = {"pitchfork": "pitchfork", "fold": "fold", "hopf_fixed": "hopf",
                 "hopf_trained": "hopf"}


def _error_record(config: dict, message: str) -> dict:
    return {
        "config": config, "task": _task_label(config), "channel_rank": None,
        "criteria": {name: {"value": None, "pass": None, "note": "error"} for name in CRITERIA},
        "bifurcations": [], "first_bifurcation_kind": None, "at_crossing": {}, "curves": {},
        "error": message, "wall_time_seconds": None,
    }


def _seed_slice(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def run_group(
    cfg: StudentTeacherConfig,
    seeds: Sequence[int],
    *,
    done: Callable[[dict], bool] = lambda config: False,
    on_record: Callable[[dict], None] = lambda record: None,
    landscape: bool = False,
    cache: str | None = None,
    after_training: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train and analyse every (seed, rate) of one configuration group; returns the records.

    `cfg.learning_rates` is the grid; `done(config)` skips finished runs (a seed is trained only
    if one of its runs is unfinished); `on_record` receives each record as soon as it exists.
    """
    require_x64("run_group")
    lrs = tuple(cfg.learning_rates)
    configs = {(s, lr): dataclasses.replace(cfg, seed=int(s), learning_rate=float(lr))
               for s in seeds for lr in lrs}
    todo_seeds = [s for s in seeds if any(not done(configs[s, lr].to_dict()) for lr in lrs)]
    if not todo_seeds:
        return []
    t0 = time.perf_counter()
    batch = setups(cfg, todo_seeds)
    ng = ng_name(cfg)
    eval_steps = np.arange(0, cfg.steps + 1, cfg.eval_every)
    ng_idx = np.arange(0, len(eval_steps), _NG_EVAL_STRIDE)
    spec = param_spec(cfg, batch.student)
    treedef = jax.tree_util.tree_structure(eqx.filter(batch.student, spec))

    def _fail_all(message: str) -> list[dict]:
        log(message)
        records = []
        for s in todo_seeds:
            for lr in lrs:
                if not done(configs[s, lr].to_dict()):
                    records.append(_error_record(configs[s, lr].to_dict(), message))
                    on_record(records[-1])
        return records

    loaded = None
    if cache is not None and os.path.exists(cache):
        loaded = _load_training(cache, treedef)
        if loaded is None:
            log(f"  ignoring {cache}: written by another version or dtype")
        else:
            losses, histories, failures, pr, top, ng_pr, timings = loaded
            log(f"  loaded the training results from {cache}")
    if loaded is None:
        try:
            losses, histories, failures = {}, {}, {}
            for name in OPTIMIZERS if ng in OPTIMIZERS else OPTIMIZERS + (ng,):
                t = time.perf_counter()
                L, H, F = train_with_refresh_failures(cfg, name, lrs, batch)
                losses[name] = np.asarray(L)
                failures[name] = np.asarray(F)
                if failures[name].any():
                    log(f"  {name}: {int(failures[name].sum())} failed eigenbasis refreshes "
                        "(previous basis kept; counted per run in the records)")
                if name in ("sgd", ng):
                    histories[name] = H
                log(f"  trained {name} on {len(todo_seeds)} seeds x {len(lrs)} rates "
                    f"in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            pr, top = (np.asarray(a) for a in evaluate(cfg, histories["sgd"], batch, eval_steps,
                                                        todo_seeds, losses["sgd"]))
            ng_pr, _ = (np.asarray(a) for a in evaluate(cfg, histories[ng], batch,
                                                         eval_steps[ng_idx], todo_seeds,
                                                         losses[ng]))
            log(f"  evaluated the sNTK along training in {time.perf_counter() - t:.1f} s")
            timings = {}
            if cache is not None:
                _save_training(cache, losses, histories, failures, pr, top, ng_pr, timings)
        except Exception as e:  # e.g. a solve that failed for one seed: every run reports it
            return _fail_all(f"training failed: {type(e).__name__}: {e}")
    # C6: one timing per rate that has unfinished runs, from the first seed, with solver steps
    # (protocol amendment, session 9).
    needed = [float(lr) for lr in lrs
              if any(not done(configs[s, lr].to_dict()) for s in todo_seeds)]
    timings, timed = _time_rates(cfg, batch, needed, timings, log)
    if timed and cache is not None:
        try:
            _save_training(cache, losses, histories, failures, pr, top, ng_pr, timings)
        except OSError as e:  # the runs go on; a resume re-times these rates
            log(f"  could not save the timings to {cache}: {e}")
    after_training()
    setup_time = time.perf_counter() - t0
    records = []
    for i, s in enumerate(todo_seeds):
        seed_setup = _seed_slice(batch, i)
        problem = make_problem(cfg, seed_setup.y0)
        spec = param_spec(cfg, seed_setup.student)
        num_params = sum(x.size for x in jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(lambda a, m: a if m else None, seed_setup.student, spec)))
        exact = use_exact(cfg, num_params)
        num_out = seed_setup.target.size
        try:
            rates = {
                "initial": stable_learning_rate(cfg, seed_setup.student, problem, spec, num_out,
                                                exact),
                "teacher": stable_learning_rate(cfg, seed_setup.teacher, problem, spec, num_out,
                                                exact),
            }
        except Exception as e:  # reported in every run of the seed, never hidden
            rates = {"initial": float("nan"), "teacher": float("nan")}
            log(f"  seed {s}: stable learning rate failed: {e}")
        baselines = {name: {float(lr): losses[name][i, j] for j, lr in enumerate(lrs)}
                     for name in ("sgd", "sgd_clip", "adam")}
        for j, lr in enumerate(lrs):
            config = configs[s, lr].to_dict()
            if done(config):
                continue
            t = time.perf_counter()
            try:
                sgd = {"losses": losses["sgd"][i, j], "pr": pr[i, j], "top": top[i, j],
                       "history": _seed_slice(_seed_slice(histories["sgd"], i), j)}
                ngd = {"losses": losses[ng][i, j], "pr": ng_pr[i, j], "eval_idx": ng_idx,
                       "history": _seed_slice(_seed_slice(histories[ng], i), j),
                       "refresh_failures": int(failures[ng][i, j])}
                rec = analyse_run(configs[s, lr], seed_setup, sgd, ngd, baselines,
                                  timings[float(lr)], rates, landscape=landscape)
                rec["optimizer_losses"] = {
                    name: C._clean(losses[name][i, j]) for name in losses}
                record = {"config": config, **rec, "error": None}
            except Exception as e:  # an analysis failure is a result, recorded with the run
                record = _error_record(config, f"{type(e).__name__}: {e}")
                log(traceback.format_exc())
            record["wall_time_seconds"] = time.perf_counter() - t + setup_time / len(configs)
            record = json.loads(json.dumps(C._clean(record), allow_nan=False))
            records.append(record)
            on_record(record)
    return records


def _time_rates(cfg, batch, rates, timings, log) -> tuple[dict, bool]:
    """C6 timings (`time_steps`, solver steps recorded) of every rate in `rates` that `timings`
    lacks. A cache from before the session-9 amendment holds one timing at the default rate
    (keys `sgd`, `ng`): it is dropped and the rates are timed anew. A failed timing is kept as
    `{"error", "learning_rate"}` (C6 alone is not assessable at that rate; not cached).
    **Returns:** `(timings by rate, whether anything was timed)`."""
    timings = {} if "sgd" in timings else dict(timings)
    missing = [lr for lr in rates if lr not in timings]
    if not missing:
        return timings, False
    t = time.perf_counter()
    for lr in missing:
        try:
            timings[lr] = time_steps(cfg, batch, learning_rate=lr, solver_steps=True)
        except Exception as e:
            timings[lr] = {"error": f"timing failed: {type(e).__name__}: {e}",
                           "learning_rate": lr}
            log(f"  rate {lr}: {timings[lr]['error']}")
    log(f"  timed the steps at {len(missing)} rate(s) in {time.perf_counter() - t:.1f} s")
    return timings, True


def _save_training(path, losses, histories, failures, pr, top, ng_pr, timings):
    arrays = {f"loss/{k}": v for k, v in losses.items()}
    arrays.update({f"refresh_failures/{k}": v for k, v in failures.items()})
    for name, h in histories.items():
        for i, leaf in enumerate(jax.tree_util.tree_leaves(h)):
            arrays[f"history/{name}/{i}"] = np.asarray(leaf)
    arrays.update(pr=pr, top=top, ng_pr=ng_pr, stamp=np.asarray(_cache_stamp()))
    timed = sorted(lr for lr, t in timings.items() if "error" not in t)
    arrays["time_rates"] = np.asarray(timed, dtype=float)
    for j, lr in enumerate(timed):
        for key in ("sgd", "ng", "sgd_solver_steps", "ng_solver_steps"):
            arrays[f"time/{j}/{key}"] = np.asarray(timings[lr][key])
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _cache_stamp() -> str:
    return f"{_CACHE_VERSION}/{jax.numpy.zeros(()).dtype}"


def _load_training(path, treedef):
    with np.load(path) as z:
        if "stamp" not in z.files or str(z["stamp"]) != _cache_stamp():
            return None
        losses = {k[5:]: z[k] for k in z.files if k.startswith("loss/")}
        failures = {k[len("refresh_failures/"):]: z[k] for k in z.files
                    if k.startswith("refresh_failures/")}
        histories = {}
        for name in {k.split("/")[1] for k in z.files if k.startswith("history/")}:
            leaves = [jax.numpy.asarray(z[f"history/{name}/{i}"])
                      for i in range(treedef.num_leaves)]
            histories[name] = jax.tree_util.tree_unflatten(treedef, leaves)
        if "time_rates" in z.files:
            timings = {float(lr): {"learning_rate": float(lr), **{
                key: z[f"time/{j}/{key}"].tolist()
                for key in ("sgd", "ng", "sgd_solver_steps", "ng_solver_steps")}}
                for j, lr in enumerate(z["time_rates"].tolist())}
        else:  # written before the session-9 amendment: one timing at the default rate
            timings = {"sgd": z["time_sgd"].tolist(), "ng": z["time_ng"].tolist()}
        return losses, histories, failures, z["pr"], z["top"], z["ng_pr"], timings


def _group_config(config: dict) -> dict:
    d = dict(config)
    d.pop("seed", None)
    return d


def summarise(records: Iterable[dict]) -> dict:
    """Aggregates runs per configuration (seed dropped): for each criterion `passes`, `runs`,
    `rate`, the Wilson 95% interval and `not_assessable`; plus error counts and kinds."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = _group_config(r["config"])
        key = json.dumps(g, sort_keys=True)
        entry = groups.setdefault(key, {"config": g, "records": []})
        entry["records"].append(r)
    out = []
    for entry in groups.values():
        recs = entry["records"]
        crit = {name: C.criterion_stats([r["criteria"].get(name, {}).get("pass") for r in recs])
                for name in CRITERIA}
        kinds: dict[str, int] = {}
        for r in recs:
            k = r.get("first_bifurcation_kind") or "none"
            kinds[k] = kinds.get(k, 0) + 1
        out.append({
            "config": entry["config"], "criteria": crit, "seeds": sorted(
                r["config"]["seed"] for r in recs),
            "errors": sum(r.get("error") is not None for r in recs),
            "first_bifurcation_kinds": kinds,
            "c6_timings": _c6_timings(recs),
        })
    out.sort(key=lambda g: json.dumps(g["config"], sort_keys=True))
    return {"groups": out, "tasks": _summarise_tasks(records)}


def _c6_timings(records: list[dict]) -> dict:
    """C6 is timed once per `run_group` call (and, since the session-9 amendment, per rate) and
    copied into each of its runs, so its pass "rate" over runs is not a rate over independent
    measurements. This counts the distinct timings (by their mean step times) and how many of
    them pass; `per_solver_step` lists their per-solver-step ratios where recorded."""
    seen: dict[tuple, Any] = {}
    for r in records:
        c6 = r.get("criteria", {}).get("C6_cost", {})
        if c6.get("ng_mean") is None or c6.get("sgd_mean") is None:
            continue
        seen[(c6["ng_mean"], c6["sgd_mean"])] = (c6.get("value"), c6.get("pass"),
                                                 c6.get("per_solver_step_ratio"))
    values = [v for v, _, _ in seen.values()]
    return {"count": len(seen), "passes": sum(bool(p) for _, p, _ in seen.values()),
            "values": sorted(float(v) for v in values if v is not None),
            "per_solver_step": sorted(float(q) for _, _, q in seen.values() if q is not None)}


def _summarise_tasks(records: Iterable[dict]) -> list[dict]:
    """Runs grouped by task label (`pitchfork`, `fold`, `hopf_fixed`, `hopf_trained`) and
    learning rate: every criterion's rate, the intended-kind rate and the channel ranks."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = r["config"]
        key = (_task_label(c), c.get("student"), c.get("hidden"), c.get("learning_rate"),
               c.get("tracker"))
        groups.setdefault(key, []).append(r)
    out = []
    for (task, student, hidden, lr, tracker), recs in sorted(
            groups.items(), key=lambda kv: json.dumps(kv[0])):
        intended = INTENDED_KIND[task]
        ranks: dict[str, int] = {}
        for r in recs:
            k = str(r.get("channel_rank")) if r.get("channel_rank") is not None else "none"
            ranks[k] = ranks.get(k, 0) + 1
        out.append({
            "task": task, "student": student, "hidden": hidden, "learning_rate": lr,
            **({"tracker": tracker} if tracker is not None else {}),
            "runs": len(recs),
            "criteria": {name: C.criterion_stats(
                [r["criteria"].get(name, {}).get("pass") for r in recs]) for name in CRITERIA},
            "intended_kind": intended,
            "intended_kind_first": C.criterion_stats(
                [r.get("first_bifurcation_kind") == intended for r in recs]),
            "channel_ranks": ranks,
            "errors": sum(r.get("error") is not None for r in recs),
        })
    return out


def run_sweep(
    out_dir: str,
    configs: Sequence[StudentTeacherConfig],
    seeds: Sequence[int],
    *,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every configuration group over `seeds` and write `runs.jsonl`, `summary.json`,
    `summary.md` and the figures to `out_dir`. With `resume`, runs already in `runs.jsonl` with
    an identical configuration and no error are skipped (and kept); without it, `runs.jsonl`
    starts afresh. Needs float64 enabled (`jax_enable_x64`; the CLI does it). **Returns:** the
    summary."""
    require_x64("run_sweep")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "runs.jsonl")
    if resume:
        kept = [r for r in load_runs(path) if r.get("error") is None]
    else:
        kept = []
    with open(path, "w") as f:
        for r in kept:
            f.write(json.dumps(r, allow_nan=False) + "\n")
    finished = {_run_id(r["config"]) for r in kept}
    done = lambda config: _run_id(config) in finished
    total = sum(len(c.learning_rates) for c in configs) * len(seeds)
    bar = _progress(progress)
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task("sweep runs", total=total, completed=len(
            [c for c in configs for s in seeds for lr in c.learning_rates
             if done(dataclasses.replace(c, seed=s, learning_rate=lr).to_dict())]))

    def on_record(record):
        _append(path, record)
        if bar is not None and task is not None:
            bar.advance(task)

    try:
        for cfg in configs:
            log(f"group {cfg.group_key()}: task={cfg.task_label}, student={cfg.student}, "
                f"N={cfg.hidden}, teacher gain "
                f"{cfg.teacher_gain}, rates {list(cfg.learning_rates)}, seeds {list(seeds)}")
            todo = [s for s in seeds if any(
                not done(dataclasses.replace(cfg, seed=s, learning_rate=lr).to_dict())
                for lr in cfg.learning_rates)]
            cache = os.path.join(out_dir, "cache", f"{cfg.training_key()}-seeds-"
                                 f"{'_'.join(str(s) for s in todo)}.npz")
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            if not resume and os.path.exists(cache):
                os.remove(cache)  # a fresh sweep never reuses training results
            run_group(cfg, seeds, done=done, on_record=on_record, cache=cache, log=log)
    finally:
        if bar is not None:
            bar.stop()
    records = load_runs(path)
    summary = summarise(records)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    from ._sweep_report import summary_markdown

    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary_markdown(summary, records))
    if figures:
        from ._sweep_report import write_sweep_figures

        write_sweep_figures(summary, records, out_dir)
    return summary


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn())
