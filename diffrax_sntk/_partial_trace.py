"""Exact partial traces of operators on (batch, time, state) arrays."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import lineax as lx

from ._spectral import _check_operator

_AXIS_NAMES = {"batch": 0, "time": 1, "state": 2}


def _normalise_axes(axes, ndim: int) -> tuple[int, ...]:
    if isinstance(axes, (str, int)):
        axes = (axes,)
    if not isinstance(axes, Sequence) or len(axes) == 0:
        raise TypeError(
            f"`axes` must be a name, an int or a non-empty tuple of them, got {axes!r}."
        )
    out = []
    for a in axes:
        if isinstance(a, str):
            if a not in _AXIS_NAMES:
                raise ValueError(
                    f"`axes` names must be one of {tuple(_AXIS_NAMES)}, got {a!r}."
                )
            if ndim != 3:
                raise ValueError(
                    "named `axes` need an operator on (batch, time, state) arrays; this one acts "
                    f"on arrays with {ndim} dimensions, so pass integer axes."
                )
            a = _AXIS_NAMES[a]
        elif isinstance(a, bool) or not isinstance(a, int):
            raise TypeError(f"`axes` entries must be str or int, got {a!r}.")
        if not -ndim <= a < ndim:
            raise ValueError(f"`axes` entry {a} is out of range for {ndim} dimensions.")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`axes` contains a repeated axis: {axes!r}.")
    if len(out) == ndim:
        raise ValueError("`axes` may not trace out every axis; use `ds.trace` for the full trace.")
    return tuple(sorted(out))


def partial_trace(
    operator: lx.AbstractLinearOperator,
    axes: str | int | tuple[str | int, ...],
) -> lx.FunctionLinearOperator:
    r"""Exact partial trace of an operator on arrays, e.g. Θ on (batch, time, state), as an
    operator.

    Splitting the index of Θ into traced indices $a$ and kept indices $i$,
    $$(\operatorname{Tr}_a Θ)_{i,j} = \sum_a Θ_{(a,i),(a,j)}.$$
    For example tracing out `"batch"` gives the (time·state)² kernel summed over trials, and
    tracing out `("batch", "state")` the T×T time kernel. This is the true partial trace (the
    diagonal blocks are summed); it is not "broadcast, apply, then sum", which also adds the
    off-diagonal blocks $Θ_{(a,i),(a',j)}$, $a ≠ a'$.

    The result is matrix-free: each of its matvecs costs one block matvec of Θ over the
    $\prod_a$ (traced sizes) basis vectors of the traced axes. Call `.as_matrix()` for the dense
    reduced kernel. Symmetry and positive semidefiniteness are inherited (tags are kept).

    **Arguments:**

    - `operator`: symmetric lineax operator whose input (= output) structure is a single array,
        e.g. the sNTK on `(B, T, N)`.
    - `axes`: axes to trace out: `"batch"`, `"time"`, `"state"` (for 3-d structures) or integer
        axes, or a tuple of them.

    **Returns:**

    A `lineax.FunctionLinearOperator` on the array of the kept axes (in their original order).
    """
    _check_operator(operator)
    struct = operator.in_structure()
    if not isinstance(struct, jax.ShapeDtypeStruct):
        raise TypeError(
            "`operator` must act on a single array for a partial trace, got structure "
            f"{struct}."
        )
    shape, dtype = struct.shape, struct.dtype
    traced = _normalise_axes(axes, len(shape))
    kept = tuple(a for a in range(len(shape)) if a not in traced)
    traced_shape = tuple(shape[a] for a in traced)
    kept_shape = tuple(shape[a] for a in kept)
    p = math.prod(traced_shape)
    # Embed a kept-axes vector v at traced multi-index a: x = v ⊗ e_a, laid out in original order.
    perm = traced + kept
    inv_perm = tuple(perm.index(a) for a in range(len(shape)))
    basis = jnp.eye(p, dtype=dtype).reshape((p,) + traced_shape)

    def embed(e, v):
        x = jnp.tensordot(e, v, axes=0)  # traced axes first, then kept
        return jnp.transpose(x, inv_perm)

    def extract(e, y):
        y = jnp.transpose(y, perm)
        return jnp.tensordot(e, y, axes=len(traced_shape))

    def mv(v):
        ys = jax.vmap(lambda e: operator.mv(embed(e, v)))(basis)
        return jnp.sum(jax.vmap(extract)(basis, ys), axis=0)

    tags = [lx.symmetric_tag]
    if lx.is_positive_semidefinite(operator):
        tags.append(lx.positive_semidefinite_tag)
    return lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct(kept_shape, dtype), tuple(tags))
