"""The sNTK along a sequence of training checkpoints: effective rank, top eigenvalues and the
alignment of consecutive kernels, matrix-free and batched over checkpoints with `vmap`."""

import sys
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

from ._misc import RESULTS, error_if_nonfinite, successful
from ._operators import sntk_operator
from ._problem import TrajectoryProblem
from ._spectral import top_eigenpairs
from ._trace_estimators import alignment, effective_rank


class SNTKCheckpoints(eqx.Module):
    """Result of `sntk_over_checkpoints`: sNTK statistics at `K` checkpoints.

    **Fields:**

    - `steps`: `(K,)` the training step of each checkpoint (`0..K-1` unless given).
    - `effective_rank`, `effective_rank_se`: `(K,)` the effective rank of Θ_k and its standard
        error (`ds.effective_rank`).
    - `top_eigenvalues`: `(K, k)` the `k` largest eigenvalues of Θ_k, descending.
    - `eigenvalues_converged`: `(K, k)` which of them met the eigensolver's tolerance.
    - `alignment`, `alignment_se`: `(K - 1,)` the kernel alignment
        `⟨Θ_k, Θ_{k+1}⟩_F / (‖Θ_k‖_F ‖Θ_{k+1}‖_F)` of consecutive checkpoints and its standard
        error (`ds.alignment`).
    - `result`: `(K,)` a `RESULTS` item per checkpoint: `successful`, or the first failure of
        the effective rank (`nonfinite`, e.g. a zero kernel) or of the eigensolver
        (`eigensolver_max_restarts`).
    - `alignment_result`: `(K - 1,)` the `RESULTS` of each alignment.

    **Properties:** `converged` (`result == RESULTS.successful`), `num_checkpoints`;
    `messages()` gives the `RESULTS` message per checkpoint.
    """

    steps: Float[Array, " checkpoints"]
    effective_rank: Float[Array, " checkpoints"]
    effective_rank_se: Float[Array, " checkpoints"]
    top_eigenvalues: Float[Array, "checkpoints k"]
    eigenvalues_converged: Bool[Array, "checkpoints k"]
    alignment: Float[Array, " pairs"]
    alignment_se: Float[Array, " pairs"]
    result: RESULTS
    alignment_result: RESULTS

    @property
    def converged(self) -> Bool[Array, " checkpoints"]:
        return successful(self.result)

    @property
    def num_checkpoints(self) -> int:
        return self.effective_rank.shape[0]

    def messages(self) -> list[str]:
        """`RESULTS` message of each checkpoint (`""` where successful; host-side)."""
        pick = lambda i: jtu.tree_map(lambda a: a[i], self.result)
        return [RESULTS[pick(i)] for i in range(self.num_checkpoints)]


def _stack_models(models) -> tuple[PyTree, PyTree, int]:
    """`(stacked dynamic part, static part, K)` from a list of models or a stacked model."""
    if isinstance(models, (list, tuple)):
        if len(models) < 1:
            raise ValueError("`models` must hold at least one checkpoint")
        structures = {jtu.tree_structure(eqx.filter(m, eqx.is_array)) for m in models}
        if len(structures) != 1:
            raise ValueError("`models`: every checkpoint must have the same pytree structure")
        dyn = [eqx.filter(m, eqx.is_array) for m in models]
        shapes = {tuple(jnp.shape(a) for a in jtu.tree_leaves(d)) for d in dyn}
        if len(shapes) != 1:
            raise ValueError("`models`: every checkpoint must have the same array shapes")
        static = eqx.partition(models[0], eqx.is_array)[1]
        return jtu.tree_map(lambda *xs: jnp.stack(xs), *dyn), static, len(models)
    dyn, static = eqx.partition(models, eqx.is_array)
    leaves = jtu.tree_leaves(dyn)
    sizes = {jnp.shape(a)[0] if jnp.ndim(a) > 0 else None for a in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        raise ValueError(
            "`models` must be a list of models or one model whose array leaves share a leading "
            f"checkpoint axis; got leading sizes {sorted(map(str, sizes))}"
        )
    return dyn, static, int(next(iter(sizes)))  # pyright: ignore[reportArgumentType]


@eqx.filter_jit
def _chunk(dyn, nxt, static, problem, key, k, opts):
    """Statistics for a chunk of checkpoints (`vmap` over its leading axis); `nxt` holds each
    checkpoint's successor for the alignments."""
    space, filter_spec, method, rank_method, num_matvecs, exact, tol = opts

    def operator(d):
        model = eqx.combine(d, static)
        return sntk_operator(model, problem, space=space, filter_spec=filter_spec, method=method)

    def one(d, d_next):
        theta = operator(d)
        er = effective_rank(theta, key=key, method=rank_method, num_matvecs=num_matvecs,
                            exact=exact)
        eig = top_eigenpairs(theta, k, key=key, tol=tol)
        al = alignment(theta, operator(d_next), key=key, num_matvecs=num_matvecs, exact=exact)
        result = RESULTS.where(successful(er.result), eig.result, er.result)
        return (er.estimate, er.standard_error, eig.values, eig.converged, result,
                al.estimate, al.standard_error, al.result)

    return jax.vmap(one)(dyn, nxt)


def _progress(total: int, show: bool):
    if not show:
        return None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    task = progress.add_task("sNTK over checkpoints", total=total)
    return progress, task


def sntk_over_checkpoints(
    models: Any,
    problem: TrajectoryProblem,
    *,
    key: PRNGKeyArray | None = None,
    k: int = 4,
    steps: Float[ArrayLike, " checkpoints"] | None = None,
    space: Literal["state", "output"] = "state",
    filter_spec: Any = eqx.is_inexact_array,
    method: Literal["participation", "entropy"] = "participation",
    num_matvecs: int = 32,
    exact: bool | None = None,
    eig_tol: float | None = None,
    batch_size: int = 4,
    progress: bool | None = None,
) -> SNTKCheckpoints:
    """Effective rank, top-`k` eigenvalues and the alignment of consecutive kernels of the sNTK
    Θ_k along a sequence of checkpoints `k = 0..K-1`.

    Matrix-free: at every checkpoint Θ_k = `ds.sntk_operator(model_k, problem)` (adjoint and
    tangent solves, never the dense matrix unless `exact`), then `ds.effective_rank`,
    `ds.top_eigenpairs` and `ds.alignment(Θ_k, Θ_{k+1})`. Checkpoints are processed in chunks of
    `batch_size` with `jax.vmap` (one compilation for the whole sequence: the last chunk is
    padded); a `rich` progress bar follows the chunks. All checkpoints use the same probes
    (`key`): common random numbers make the differences between checkpoints less noisy than the
    estimates themselves.

    **Arguments:**

    - `models`: a list of models (one per checkpoint, same structure and shapes), or one model
        whose array leaves have a leading checkpoint axis (e.g. from `eqx.filter_vmap`).
    - `problem`: the `TrajectoryProblem` on which Θ is evaluated (the same for every
        checkpoint).
    - `key`: PRNG key for the probes (default `jr.PRNGKey(0)`).
    - `k`: number of top eigenvalues.
    - `steps`: `(K,)` training step of each checkpoint, kept for plotting (default `0..K-1`).
    - `space`, `filter_spec`: as for `ds.sntk_operator`.
    - `method`: `"participation"` or `"entropy"` effective rank.
    - `num_matvecs`: matvec budget of `effective_rank` and (per operator) of `alignment`.
    - `exact`: forwarded to `effective_rank` and `alignment` (`None`: dense when the dimension
        is at most `num_matvecs`).
    - `eig_tol`: residual tolerance of `top_eigenpairs` (its default when `None`).
    - `batch_size`: checkpoints per `vmap`-ed chunk (memory grows with it).
    - `progress`: show a progress bar; default (`None`) when there is more than one chunk and
        stderr is a terminal.

    **Returns:**

    An `SNTKCheckpoints` with a `RESULTS` code per checkpoint and per alignment. Non-finite
    parameters raise (also under `jit`); a failed solve raises as in `ds.sntk_operator`.
    """
    if not isinstance(problem, TrajectoryProblem):
        raise TypeError(
            f"`problem` must be a `diffrax_sntk.TrajectoryProblem`, got {type(problem).__name__}."
        )
    dyn, static, num = _stack_models(models)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if space not in ("state", "output"):
        raise ValueError(f"`space` must be 'state' or 'output', got {space!r}")
    if steps is None:
        steps_arr = jnp.arange(num, dtype=problem.dtype)
    else:
        steps_arr = jnp.asarray(steps, dtype=problem.dtype)
        if steps_arr.shape != (num,):
            raise ValueError(f"`steps` must have shape ({num},), got {steps_arr.shape}")
    key = jr.PRNGKey(0) if key is None else key
    dyn = error_if_nonfinite(dyn, "models")
    bs = min(batch_size, num)
    chunks = -(-num // bs)
    # Pad to whole chunks by repeating the last checkpoint (its results are dropped); each
    # checkpoint's successor is the next one (the last one's is itself, also dropped).
    pad_idx = np.minimum(np.arange(chunks * bs), num - 1)
    nxt_idx = np.minimum(pad_idx + 1, num - 1)
    take = lambda idx: jtu.tree_map(lambda a: a[idx], dyn)
    dyn_pad, nxt_pad = take(pad_idx), take(nxt_idx)
    # `method="solve"`: inside `vmap` the operator cannot record a replay, say so explicitly.
    opts = (space, filter_spec, "solve", method, num_matvecs, exact, eig_tol)
    show = progress if progress is not None else (chunks > 1 and sys.stderr.isatty())
    bar = _progress(chunks, bool(show))
    outs = []
    try:
        for c in range(chunks):
            sl = slice(c * bs, (c + 1) * bs)
            part = lambda t, sl=sl: jtu.tree_map(lambda a: a[sl], t)
            outs.append(_chunk(part(dyn_pad), part(nxt_pad), static, problem, key, k, opts))
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    cat = jtu.tree_map(lambda *xs: jnp.concatenate(xs), *outs)
    er, er_se, vals, conv, result, al, al_se, al_result = jtu.tree_map(lambda a: a[:num], cat)
    pair = lambda t: jtu.tree_map(lambda a: a[: num - 1], t)
    return SNTKCheckpoints(
        steps=steps_arr,
        effective_rank=er,
        effective_rank_se=er_se,
        top_eigenvalues=vals,
        eigenvalues_converged=conv,
        alignment=pair(al),
        alignment_se=pair(al_se),
        result=result,
        alignment_result=pair(al_result),
    )
