"""Data parallelism over trials with `jax.sharding`.

Trials are independent ODE solves that share the model's parameters, so the natural split is
the batch axis: each device integrates `B / D` trials and the parameters are replicated. We do
not distribute anything by hand; `shard_trials` only *places* the problem's per-trial arrays
with a `NamedSharding`, and XLA's SPMD partitioner propagates that placement through every
jitted `simulate`, J, Jᵀ and Θv (the vmap over trials becomes a per-device loop; the sum over
trials in Jᵀv becomes an all-reduce).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._problem import TrajectoryProblem

__all__ = ["shard_trials"]


def _trial_mesh(mesh_or_devices, axis_name: str) -> Mesh:
    if mesh_or_devices is None:
        mesh_or_devices = jax.devices()
    if isinstance(mesh_or_devices, Mesh):
        if axis_name not in mesh_or_devices.axis_names:
            raise ValueError(
                f"`mesh_or_devices` is a mesh with axes {mesh_or_devices.axis_names}; it needs an "
                f"axis named `axis_name={axis_name!r}` to split trials over."
            )
        mesh = mesh_or_devices
        if any(t != AxisType.Auto for t in mesh.axis_types):
            # `jax.make_mesh` defaults to Explicit axes, whose sharding-in-types rejects the
            # unbatched-but-sharded problem that the operators close over inside their vmap
            # over trials. The same devices with Auto axes leave propagation to XLA.
            auto = (AxisType.Auto,) * mesh.devices.ndim
            mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
        return mesh
    if isinstance(mesh_or_devices, jax.Device):
        mesh_or_devices = [mesh_or_devices]
    if not isinstance(mesh_or_devices, (Sequence, np.ndarray)) or not all(
        isinstance(d, jax.Device) for d in mesh_or_devices
    ):
        raise ValueError(
            "`mesh_or_devices` must be a `jax.sharding.Mesh`, a sequence of `jax.Device`s "
            f"(e.g. `jax.devices()`), or None; got {type(mesh_or_devices).__name__}."
        )
    devices = list(mesh_or_devices)
    if not devices:
        raise ValueError("`mesh_or_devices` is an empty sequence of devices.")
    if len(set(devices)) != len(devices):
        raise ValueError("`mesh_or_devices` lists a device more than once.")
    return Mesh(np.array(devices), (axis_name,))


def shard_trials(
    problem: TrajectoryProblem,
    mesh_or_devices: Mesh | Sequence[jax.Device] | None = None,
    *,
    axis_name: str = "trials",
) -> TrajectoryProblem:
    """Place a problem's trials across devices, for data-parallel solves under `jit`.

    The per-trial arrays (`y0`, shape `(B, N)`, and array `inputs`, shape `(B, T_in, M)`) are
    split along their batch axis over the mesh axis `axis_name`; every other array of the
    problem (`ts`, `t0`, `input_ts`, step grids, shared input paths) is replicated. Jitted
    `simulate`, `jacobian_operator(...).mv` / `.transpose().mv` and `sntk_operator(...).mv`
    then run data-parallel over trials through XLA SPMD. Parameters stay replicated: J v
    broadcasts them, Jᵀ v all-reduces the per-trial contributions. Place vectors in state
    space the same way, `jax.device_put(v, problem.y0.sharding)` (trailing axes replicated).

    **Arguments:**

    - `problem`: a `TrajectoryProblem`.
    - `mesh_or_devices`: a `jax.sharding.Mesh` with an axis named `axis_name` (other axes, if
      any, replicate the trials), a sequence of devices (a 1-D mesh is built over them), or
      `None` for all of `jax.devices()` (across hosts after `jax.distributed.initialize()`).
      Explicit mesh axes (the default of `jax.make_mesh`) are used as `Auto` axes: the
      placement is left to XLA's sharding propagation.
    - `axis_name`: the mesh axis to split trials over (default `"trials"`).

    **Returns:**

    A `TrajectoryProblem` equal to `problem` whose arrays carry `NamedSharding`s on the mesh.

    **Raises:**

    `ValueError` if the batch size is not divisible by the number of devices along
    `axis_name`, or if `mesh_or_devices` is not a mesh / devices.
    """
    if not isinstance(problem, TrajectoryProblem):
        raise ValueError(
            f"`problem` must be a `diffrax_sntk.TrajectoryProblem`, got {type(problem).__name__}."
        )
    if not isinstance(axis_name, str):
        raise ValueError(f"`axis_name` must be a str, got {axis_name!r}.")
    mesh = _trial_mesh(mesh_or_devices, axis_name)
    num = mesh.shape[axis_name]
    batch = problem.batch_size
    if batch % num != 0:
        raise ValueError(
            f"`problem` has batch size {batch}, not divisible by the {num} devices of "
            f"`mesh_or_devices` along {axis_name!r}; pad the batch or use a divisor of it."
        )
    replicated = NamedSharding(mesh, PartitionSpec())
    by_trial = NamedSharding(mesh, PartitionSpec(axis_name))
    out = jtu.tree_map(
        lambda x: jax.device_put(x, replicated) if eqx.is_array(x) else x, problem
    )
    out = eqx.tree_at(lambda p: p.y0, out, jax.device_put(problem.y0, by_trial))
    if problem.input_mode == "array":
        out = eqx.tree_at(lambda p: p.inputs, out, jax.device_put(problem.inputs, by_trial))
    return out
