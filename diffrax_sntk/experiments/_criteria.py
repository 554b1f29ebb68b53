"""Per-run criteria C1–C6 of the student–teacher protocol, as pure NumPy functions.

The specification is `docs/student_teacher_protocol.md`; every criterion returns a JSON-ready dict
`{"value", "pass", "note", ...details}` with `None` for missing or non-finite numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np
from jaxtyping import Bool, Float

FORMS = ("pitchfork", "transcritical", "fold", "linear")


# ---------------------------------------------------------------------------------------------
# Helpers


def _clean(obj: Any) -> Any:
    """Makes `obj` JSON-serialisable with `allow_nan=False`: non-finite floats become `None`."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _result(value: Any, passed: bool | None, note: str | None, **details: Any) -> dict:
    return _clean({"value": value, "pass": passed, "note": note, **details})


def _vector(x: Any, name: str, length: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {a.shape}.")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"`{name}` must have length {length}, got {a.shape[0]}.")
    return a


def _all3(conditions: Sequence[bool | None]) -> bool | None:
    """Three-valued AND: `False` if any condition fails, `None` if any is undecided, else `True`."""
    if any(c is False for c in conditions):
        return False
    if any(c is None for c in conditions):
        return None
    return True


def _finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# Statistics


def _average_ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: Float[np.ndarray, " n"], y: Float[np.ndarray, " n"]) -> float | None:
    """Spearman's rank correlation with average ranks for ties, over the finite pairs.

    **Arguments:** `x`, `y`: equal-length 1-D arrays.

    **Returns:** ρ, or `None` with fewer than 3 finite pairs or a constant rank vector.
    """
    x = _vector(x, "x")
    y = _vector(y, "y", len(x))
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return None
    rx = _average_ranks(x[keep])
    ry = _average_ranks(y[keep])
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return None
    return float(dx @ dy) / denom


def wilson_interval(passes: int, runs: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the rate `passes / runs`.

    **Returns:** `(low, high)`; `(0.0, 1.0)` when `runs == 0`.
    """
    if runs < 0 or passes < 0 or passes > runs:
        raise ValueError(f"`passes` must lie in [0, `runs`], got passes={passes}, runs={runs}.")
    if runs == 0:
        return 0.0, 1.0
    n = float(runs)
    p = passes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def criterion_stats(passes_list: Sequence[bool | None]) -> dict:
    """Summary of one criterion over a group's runs; a `None` counts as a run that did not pass.

    **Returns:** `{"passes", "runs", "rate", "wilson_low", "wilson_high", "not_assessable"}`.
    """
    for i, p in enumerate(passes_list):
        if p is not None and not isinstance(p, (bool, np.bool_)):
            raise ValueError(f"`passes_list` entries must be bool or None; entry {i} is {p!r}.")
    runs = len(passes_list)
    passes = sum(1 for p in passes_list if p is not None and bool(p))
    low, high = wilson_interval(passes, runs)
    return _clean(
        {
            "passes": passes,
            "runs": runs,
            "rate": passes / runs if runs else None,
            "wilson_low": low,
            "wilson_high": high,
            "not_assessable": sum(1 for p in passes_list if p is None),
        }
    )


# ---------------------------------------------------------------------------------------------
# C1 — localisation


def local_minima(pr: Float[np.ndarray, " evals"]) -> Bool[np.ndarray, " evals"]:
    """Local minima `pr[i] ≤ pr[i±1]` (one-sided at the ends).

    A NaN entry is never a minimum, and a comparison with a NaN neighbour fails (a run's PR next to
    a failed evaluation is not evidence of a dip).
    """
    pr = _vector(pr, "pr")
    n = len(pr)
    with np.errstate(invalid="ignore"):
        left = np.ones(n, bool)
        right = np.ones(n, bool)
        left[1:] = pr[1:] <= pr[:-1]
        right[:-1] = pr[:-1] <= pr[1:]
    return left & right & np.isfinite(pr)


def _localised(crossings: np.ndarray, minima_steps: np.ndarray, eval_every: float) -> np.ndarray:
    """Whether each crossing (any leading shape) has a minimum within ±`eval_every`."""
    if minima_steps.size == 0:
        return np.zeros(crossings.shape, bool)
    dist = np.abs(crossings[..., None] - minima_steps)
    return dist.min(axis=-1) <= eval_every * (1 + 1e-12)


def c1_localisation(
    *,
    eval_steps: Float[np.ndarray, " evals"],
    pr: Float[np.ndarray, " evals"],
    lam_c: Float[np.ndarray, " evals"],
    crossings: Sequence[float],
    eval_every: float,
    steps: float,
    rng_seed: int = 0,
    draws: int = 2000,
) -> dict:
    """C1: every crossing sits at a local PR minimum, and PR follows |lam_c| on the stable side.

    **Arguments:** evaluation steps, PR and critical eigenvalue per evaluation; `crossings`: the
    fractional training steps of the tracker's bifurcations; `eval_every`, `steps`: the evaluation
    period and run length; `rng_seed`, `draws`: the random-placement p-value.

    **Returns:** the criterion dict, details `rho`, `localised`, `p_value`, `num_crossings`,
    `stable_evaluations`.
    """
    eval_steps = _vector(eval_steps, "eval_steps")
    pr = _vector(pr, "pr", len(eval_steps))
    lam_c = _vector(lam_c, "lam_c", len(eval_steps))
    crossings_arr = _vector(list(crossings), "crossings")
    if not eval_every > 0:
        raise ValueError(f"`eval_every` must be positive, got {eval_every}.")
    if not steps > 0:
        raise ValueError(f"`steps` must be positive, got {steps}.")
    if draws < 1:
        raise ValueError(f"`draws` must be at least 1, got {draws}.")

    stable = np.isfinite(lam_c) & (lam_c < 0) & np.isfinite(pr)
    n_stable = int(stable.sum())
    rho = spearman(pr[stable], np.abs(lam_c[stable])) if n_stable >= 5 else None
    minima_steps = eval_steps[local_minima(pr)]
    details = {"rho": rho, "num_crossings": len(crossings_arr), "stable_evaluations": n_stable}

    if len(crossings_arr) == 0:
        return _result(rho, False, "no crossing", localised=[], p_value=None, **details)

    localised = _localised(crossings_arr, minima_steps, eval_every)
    rng = np.random.default_rng(rng_seed)
    random_c = rng.uniform(0.0, steps, size=(draws, len(crossings_arr)))
    hits = int(_localised(random_c, minima_steps, eval_every).all(axis=1).sum())
    p_value = (hits + 1) / (draws + 1)

    passed = bool(localised.all()) and rho is not None and rho >= 0.7
    note = None
    if rho is None:
        note = "fewer than 5 stable-side evaluations"
    return _result(rho, passed, note, localised=localised.tolist(), p_value=p_value, **details)


# ---------------------------------------------------------------------------------------------
# C2 — depth


def c2_depth(
    *,
    pr: Float[np.ndarray, " evals"] | None,
    lam_c: Float[np.ndarray, " evals"] | None,
    top_eigenvalues: Float[np.ndarray, "evals k"] | None,
    pr_at_crossing: float | None,
    gap_at_crossing: float | None,
    has_crossing: bool,
) -> dict:
    """C2: the PR dip at the crossing is deep and the spectral gap opens there only.

    **Arguments:** PR and `lam_c` per evaluation; `top_eigenvalues`: s₁ ≥ s₂ ≥ … per evaluation
    (`None` for matrix-free runs); PR and s₁/s₂ at the crossing.

    **Returns:** the criterion dict, details `reference`, `gap_at_crossing`, `gap_far`.
    """
    empty = {"reference": None, "gap_at_crossing": None, "gap_far": None}
    if not has_crossing:
        return _result(None, False, "no crossing", **empty)
    pr = _vector(pr, "pr")
    lam_c = _vector(lam_c, "lam_c", len(pr))
    gap_far = None
    if top_eigenvalues is not None:
        s = np.asarray(top_eigenvalues, dtype=float)
        if s.ndim != 2 or s.shape[0] != len(pr) or s.shape[1] < 2:
            raise ValueError(
                f"`top_eigenvalues` must have shape ({len(pr)}, k ≥ 2), got {s.shape}."
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            gaps = s[:, 0] / s[:, 1]
        far = (np.abs(lam_c) >= 0.5) & np.isfinite(gaps)
        if far.any():
            gap_far = float(np.median(gaps[far]))

    ref_mask = (np.abs(lam_c) >= 0.3) & np.isfinite(pr)
    reference = float(np.median(pr[ref_mask])) if ref_mask.sum() >= 3 else None
    gap_c = float(gap_at_crossing) if _finite(gap_at_crossing) else None
    details = {"reference": reference, "gap_at_crossing": gap_c, "gap_far": gap_far}
    if reference is None or reference <= 0 or not _finite(pr_at_crossing):
        return _result(None, None, "fewer than 3 evaluations with |lam_c| >= 0.3", **details)

    value = float(pr_at_crossing) / reference
    passed = _all3(
        [
            value <= 0.35,
            None if gap_c is None else gap_c >= 10.0,
            None if gap_far is None else gap_far <= 3.0,
        ]
    )
    note = None
    if passed is None:
        note = "no gap at the crossing" if gap_c is None else "no evaluation with |lam_c| >= 0.5"
    return _result(value, passed, note, **details)


# ---------------------------------------------------------------------------------------------
# C3 — channel


def choose_channel_evaluations(
    lam_c: Float[np.ndarray, " evals"], max_points: int = 6
) -> list[int]:
    """Up to `max_points` stable-side evaluations with |lam_c| spread evenly over its range.

    The evaluation nearest each of `max_points` evenly spaced |lam_c| targets, duplicates dropped.

    **Returns:** evaluation indices, ascending.
    """
    lam_c = _vector(lam_c, "lam_c")
    if max_points < 1:
        raise ValueError(f"`max_points` must be at least 1, got {max_points}.")
    idx = np.flatnonzero(np.isfinite(lam_c) & (lam_c < 0))
    if idx.size == 0:
        return []
    a = np.abs(lam_c[idx])
    targets = np.linspace(a.min(), a.max(), max_points)
    chosen = {int(idx[np.argmin(np.abs(a - t))]) for t in targets}
    return sorted(chosen)


def c3_channel(
    *,
    energy_at_crossing: float | None,
    overlap_at_crossing: float | None,
    lam_c_points: Float[np.ndarray, " points"] | None,
    energy_points: Float[np.ndarray, " points"] | None,
    overlap_points: Float[np.ndarray, " points"] | None,
    has_crossing: bool,
) -> dict:
    """C3: the bifurcation channel carries the sNTK at the crossing, and less of it far away.

    **Arguments:** energy fraction and overlap ‖Π_U u₁‖ at the crossing, and `lam_c`, energy
    fraction and overlap at the chosen stable-side evaluations (`choose_channel_evaluations`).

    **Returns:** the criterion dict, details `decreasing_rho`, `overlap_far_min`, `points`.
    """
    empty = {"decreasing_rho": None, "overlap_far_min": None, "points": 0}
    if not has_crossing:
        return _result(None, False, "no crossing", **empty)
    lam = _vector(lam_c_points, "lam_c_points")
    energy = _vector(energy_points, "energy_points", len(lam))
    overlap = _vector(overlap_points, "overlap_points", len(lam))
    e_c = float(energy_at_crossing) if _finite(energy_at_crossing) else math.nan
    o_c = float(overlap_at_crossing) if _finite(overlap_at_crossing) else math.nan

    all_lam = np.concatenate([[0.0], np.abs(lam)])
    all_energy = np.concatenate([[e_c], energy])
    n_points = int((np.isfinite(all_lam) & np.isfinite(all_energy)).sum())
    rho = spearman(all_energy, all_lam) if n_points >= 4 else None
    far = (np.abs(lam) >= 0.5) & np.isfinite(overlap)
    overlap_far_min = float(overlap[far].min()) if far.any() else None
    details = {"decreasing_rho": rho, "overlap_far_min": overlap_far_min, "points": n_points}

    core = _all3(
        [
            None if math.isnan(e_c) else e_c >= 0.7,
            None if rho is None else rho <= -0.5,
            None if math.isnan(o_c) else o_c >= 0.99,
        ]
    )
    if core is not True:
        note = None if core is False else "fewer than 4 points or missing crossing values"
        return _result(e_c, core, note, **details)
    if overlap_far_min is None or overlap_far_min >= 0.9:
        return _result(e_c, None, "not diagnostic", **details)
    return _result(e_c, True, None, **details)


# ---------------------------------------------------------------------------------------------
# C4 — normal form


def normal_form_response(
    form: str,
    *,
    w: Float[np.ndarray, "trials fine"],
    t_fine: Float[np.ndarray, " fine"],
    lam_c: float,
    b2: float,
    b3: float,
    a_u: float,
    b1_u: float,
) -> Float[np.ndarray, "trials fine"]:
    """The reduced response δw of one normal form, by Heun's method from δw(0) = 0.

    ```
    pitchfork:     δẇ = (λ_c + (b₃/2) w²) δw + a_u + b₁ᵤ w
    transcritical: δẇ = (λ_c + b₂ w) δw + a_u + b₁ᵤ w
    fold:          δẇ = (λ_c + b₂ w) δw + a_u
    linear:        δẇ = λ_c δw + a_u + b₁ᵤ w
    ```

    **Arguments:** `w`: the projected trajectory w_b(t) on the grid `t_fine`; the reduced
    coefficients at the crossing.

    **Returns:** δw with the shape of `w`.
    """
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}, got {form!r}.")
    w = np.asarray(w, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"`w` must have shape (trials, fine), got {w.shape}.")
    t = _vector(t_fine, "t_fine", w.shape[1])
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("`t_fine` must be strictly increasing with at least 2 points.")
    if form == "pitchfork":
        rate = lam_c + 0.5 * b3 * w**2
    elif form == "linear":
        rate = np.full_like(w, lam_c)
    else:
        rate = lam_c + b2 * w
    forcing = a_u + (0.0 if form == "fold" else b1_u) * w

    dw = np.zeros_like(w)
    for n in range(len(t) - 1):
        h = t[n + 1] - t[n]
        k1 = rate[:, n] * dw[:, n] + forcing[:, n]
        pred = dw[:, n] + h * k1
        k2 = rate[:, n + 1] * pred + forcing[:, n + 1]
        dw[:, n + 1] = dw[:, n] + 0.5 * h * (k1 + k2)
    return dw


def fit_one_scale(response: np.ndarray, prediction: np.ndarray) -> tuple[float, float]:
    """Least-squares scale c = ⟨R, P⟩/⟨P, P⟩ and relative error ‖R − cP‖/‖R‖ (1 when P = 0)."""
    r = np.asarray(response, dtype=float)
    p = np.asarray(prediction, dtype=float)
    if r.shape != p.shape:
        raise ValueError(
            f"`prediction` must have the shape of `response` {r.shape}, got {p.shape}."
        )
    pp = float(np.vdot(p, p))
    if pp == 0.0:
        return 0.0, 1.0
    c = float(np.vdot(r, p)) / pp
    rn = float(np.linalg.norm(r))
    err = float(np.linalg.norm(r - c * p)) / rn if rn > 0 else math.nan
    return c, err


def c4_normal_form(
    *,
    kind: str,
    response: Float[np.ndarray, "trials time state"] | None,
    q: Float[np.ndarray, " state"] | None,
    w: Float[np.ndarray, "trials fine"] | None,
    t_fine: Float[np.ndarray, " fine"] | None,
    t_obs: Float[np.ndarray, " time"] | None,
    lam_c: float | None,
    b2: float | None,
    b3: float | None,
    a_u: float | None,
    b1_u: float | None,
    has_crossing: bool,
) -> dict:
    """C4: the restricted response R = J u₁ follows the detected kind's normal form, not a rival's.

    **Arguments:** `kind`: the tracker's kind at the crossing; `response`: R; `q`: the right
    critical vector; `w`, `t_fine`: the projected trajectory on the fine grid; `t_obs`: the
    observation times of `response`; the reduced coefficients.

    **Returns:** the criterion dict, details `errors` (form → error), `best_rival`, `scale`.
    """
    empty = {"errors": {}, "best_rival": None, "scale": None}
    if kind not in (*FORMS, "hopf"):
        raise ValueError(f"`kind` must be one of {(*FORMS, 'hopf')}, got {kind!r}.")
    if not has_crossing:
        return _result(None, False, "no crossing", **empty)
    r = np.asarray(response, dtype=float)
    if r.ndim != 3:
        raise ValueError(f"`response` must have shape (trials, time, state), got {r.shape}.")
    q = _vector(q, "q", r.shape[2])
    w = np.asarray(w, dtype=float)
    if w.ndim != 2 or w.shape[0] != r.shape[0]:
        raise ValueError(f"`w` must have shape ({r.shape[0]}, fine), got {w.shape}.")
    t_fine = _vector(t_fine, "t_fine", w.shape[1])
    t_obs = _vector(t_obs, "t_obs", r.shape[1])
    if len(t_fine) < 2 or np.any(np.diff(t_fine) <= 0):
        raise ValueError("`t_fine` must be strictly increasing with at least 2 points.")
    idx = np.abs(t_obs[:, None] - t_fine[None, :]).argmin(axis=1)
    off = np.abs(t_fine[idx] - t_obs)
    if np.any(off > 0.5 * np.max(np.diff(t_fine)) * (1 + 1e-9)):
        raise ValueError("`t_obs` must lie within half a fine step of points of `t_fine`.")
    coeffs: dict[str, float] = {}
    for name, v in (("lam_c", lam_c), ("b2", b2), ("b3", b3), ("a_u", a_u), ("b1_u", b1_u)):
        if v is None:
            raise ValueError(f"`{name}` is required when `has_crossing` is true.")
        coeffs[name] = float(v)

    errors, scales = {}, {}
    for form in FORMS:
        dw = normal_form_response(form, w=w, t_fine=t_fine, **coeffs)
        prediction = dw[:, idx, None] * q[None, None, :]
        scales[form], errors[form] = fit_one_scale(r, prediction)
    if kind == "hopf":
        return _result(
            None, None, "hopf crossing not covered", errors=errors, best_rival=None, scale=None
        )
    value = errors[kind]
    rivals = [errors[f] for f in FORMS if f != kind and math.isfinite(errors[f])]
    best_rival = min(rivals) if rivals else math.nan
    if not math.isfinite(value):
        return _result(
            None, False, "zero response", errors=errors, best_rival=best_rival, scale=None
        )
    passed = value <= 0.25 and (not math.isfinite(best_rival) or value <= 0.5 * best_rival)
    return _result(value, passed, None, errors=errors, best_rival=best_rival, scale=scales[kind])


def landscape_check(s: Float[np.ndarray, " points"], loss: Float[np.ndarray, " points"]) -> dict:
    """Secondary C4 check: L(θ_c + s u₁) fitted by 1, s², s⁴ with the centre pinned at s = 0.

    Passes iff R² ≥ 0.95 and (1 − R²) < 0.5 (1 − R²_line).

    **Returns:** the check's dict (`value` = R²), details `r2`, `r2_line`, `prediction`.
    """
    s = _vector(s, "s")
    loss = _vector(loss, "loss", len(s))
    if len(s) < 4:
        raise ValueError(f"`s` needs at least 4 points, got {len(s)}.")
    empty = {"r2": None, "r2_line": None, "prediction": []}
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(loss))):
        return _result(None, False, "non-finite loss", **empty)
    ss_tot = float(np.sum((loss - loss.mean()) ** 2))
    if ss_tot == 0.0:
        return _result(None, None, "constant landscape", **empty)

    def r2_of(design: np.ndarray) -> tuple[float, np.ndarray]:
        coef, *_ = np.linalg.lstsq(design, loss, rcond=None)
        fit = design @ coef
        return 1.0 - float(np.sum((loss - fit) ** 2)) / ss_tot, fit

    ones = np.ones_like(s)
    r2, prediction = r2_of(np.stack([ones, s**2, s**4], axis=1))
    r2_line, _ = r2_of(np.stack([ones, s], axis=1))
    passed = r2 >= 0.95 and (1.0 - r2) < 0.5 * (1.0 - r2_line)
    return _result(r2, passed, None, r2=r2, r2_line=r2_line, prediction=prediction)


# ---------------------------------------------------------------------------------------------
# C5 — optimizers


def spike_factor(losses: Float[np.ndarray, " steps"]) -> float:
    """`max_k L(k) / min_{j<k} L(j)` over k ≥ 1; `inf` if any loss is non-finite."""
    losses = _vector(losses, "losses")
    if len(losses) < 2:
        raise ValueError(f"`losses` needs at least 2 entries, got {len(losses)}.")
    if not np.all(np.isfinite(losses)):
        return math.inf
    prev_min = np.minimum.accumulate(losses)[:-1]
    nxt = losses[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(prev_min > 0, nxt / np.where(prev_min > 0, prev_min, 1.0), np.nan)
    # A loss that reached exactly 0 spikes infinitely on any later positive loss.
    ratio = np.where(prev_min > 0, ratio, np.where(nxt > 0, math.inf, 1.0))
    return float(ratio.max())


def steps_to_target(losses: Float[np.ndarray, " steps"], fraction: float = 1e-2) -> float:
    """First step k with L(k) ≤ `fraction` · L(0); `inf` if never or if the run diverged."""
    losses = _vector(losses, "losses")
    if len(losses) < 1:
        raise ValueError("`losses` must not be empty.")
    if not np.all(np.isfinite(losses)):
        return math.inf
    hit = np.flatnonzero(losses <= fraction * losses[0])
    return float(hit[0]) if hit.size else math.inf


def c5_optimizer(
    *,
    ng_losses: Float[np.ndarray, " steps"],
    baseline_losses: Mapping[str, Mapping[float, Float[np.ndarray, " steps"]]],
    spike_tol: float = 1.05,
) -> dict:
    """C5: natural gradient reaches the target sooner than the best-tuned baseline, without a spike.

    **Arguments:** `ng_losses`: NG's losses at the run's learning rate; `baseline_losses`:
    optimizer name → learning rate → losses.

    **Returns:** the criterion dict (`value` = NG steps to target), details `best_baseline`
    (`steps`, `name`, `lr`), `ng_spike`, `diverged`, `baseline_steps` (`[name, lr, steps]` rows).
    """
    ng = _vector(ng_losses, "ng_losses")
    if not baseline_losses or not any(len(v) for v in baseline_losses.values()):
        raise ValueError("`baseline_losses` must hold at least one optimizer and learning rate.")
    rows = []
    best = {"steps": math.inf, "name": None, "lr": None}
    for name, by_lr in baseline_losses.items():
        for lr, losses in by_lr.items():
            steps = steps_to_target(_vector(losses, f"baseline_losses[{name!r}][{lr!r}]"))
            rows.append([name, float(lr), steps])
            if steps < best["steps"]:
                best = {"steps": steps, "name": name, "lr": float(lr)}
    ng_steps = steps_to_target(ng)
    ng_spike = spike_factor(ng)
    diverged = not bool(np.all(np.isfinite(ng)))
    passed = ng_spike <= spike_tol and ng_steps < best["steps"]
    note = "diverged" if diverged else None
    return _result(
        ng_steps,
        bool(passed),
        note,
        best_baseline=best,
        ng_spike=ng_spike,
        diverged=diverged,
        baseline_steps=rows,
    )


# ---------------------------------------------------------------------------------------------
# C6 — cost


def c6_cost(
    *,
    sgd_times: Float[np.ndarray, " steps"],
    ng_times: Float[np.ndarray, " steps"],
    limit: float = 1.3,
    sgd_solver_steps: Float[np.ndarray, " steps"] | None = None,
    ng_solver_steps: Float[np.ndarray, " steps"] | None = None,
    timed_rate: float | None = None,
) -> dict:
    """C6: NG's mean wall time per compiled step over SGD's is at most `limit`.

    **Arguments:** per-step wall times after the compiling call (refresh steps included);
    optionally the accepted solver steps of the forward solve before each timed step (aligned
    with the times) and the learning rate the steps were timed at (protocol amendment of
    session 9).

    **Returns:** the criterion dict, details `median_ratio`, `ng_mean`, `sgd_mean`, `ng_median`,
    `sgd_median`; with solver steps also `per_solver_step_ratio` = (Σ NG time / Σ NG solver
    steps) / (Σ SGD time / Σ SGD solver steps) and each optimizer's median solver steps
    (reported, not scored); with `timed_rate`, `timed_rate`.
    """
    sgd = _vector(sgd_times, "sgd_times")
    ng = _vector(ng_times, "ng_times")
    for name, a in (("sgd_times", sgd), ("ng_times", ng)):
        if len(a) == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"`{name}` must be non-empty, finite and positive.")
    extra: dict = {}
    if (sgd_solver_steps is None) != (ng_solver_steps is None):
        raise ValueError("`sgd_solver_steps` and `ng_solver_steps` must be given together.")
    if sgd_solver_steps is not None:
        for name, n, t in (("sgd_solver_steps", sgd_solver_steps, sgd),
                           ("ng_solver_steps", ng_solver_steps, ng)):
            n = _vector(n, name)
            if n.shape != t.shape or not np.all(np.isfinite(n)) or np.any(n <= 0):
                raise ValueError(f"`{name}` must be positive, finite and as long as the times "
                                 f"({t.size}), got shape {n.shape}.")
            extra[f"{name.split('_')[0]}_solver_steps_median"] = float(np.median(n))
            extra[f"{name.split('_')[0]}_per_solver_step"] = float(t.sum() / n.sum())
        extra["per_solver_step_ratio"] = (extra.pop("ng_per_solver_step")
                                          / extra.pop("sgd_per_solver_step"))
    if timed_rate is not None:
        extra["timed_rate"] = float(timed_rate)
    value = float(ng.mean() / sgd.mean())
    return _result(
        value,
        value <= limit,
        None,
        median_ratio=float(np.median(ng) / np.median(sgd)),
        ng_mean=float(ng.mean()),
        sgd_mean=float(sgd.mean()),
        ng_median=float(np.median(ng)),
        sgd_median=float(np.median(sgd)),
        **extra,
    )
