r"""The fold and Hopf tasks of the student–teacher sweep (`diffrax-sntk sweep --task fold|hopf`).

- **fold**: the pitchfork task's teacher with a bias h·q along its direction q (an imperfect
  pitchfork): at gain g_T = 1.6 and h = 0.15 it keeps two attractors, the far one (against the
  bias) close to its saddle-node. The student has the same bias and gain g_S = 0.5 along q, where
  that attractor does not exist; it trains W, b and U. Creating the attractor is a saddle-node
  *birth* away from the student's initial equilibrium, which `ds.track_bifurcations` reports
  with `seed_states` (`BifurcationTrack.births`).
- **hopf**: a CTRNN whose recurrent matrix is a rotation block in a plane plus a bulk on its
  complement, W = B · blockdiag([[g, −ω], [ω, g]], bulk) · Bᵀ (B orthonormal). At the origin
  A = −I + W, so the plane's eigenvalues are −1 + g ± iω and the bulk's are untouched: the
  origin has a Hopf at g = 1 (supercritical: tanh saturates). The teacher has g_T = 1.6 (a stable
  limit cycle), the student g_S = 0.5 (damped oscillations). The student trains g, the bulk
  block and U; with `hopf_frequency="trained"` also ω (starting at 0.7 against the teacher's
  1.0), with `"fixed"` ω is the teacher's and is not a parameter, so no trained parameter moves
  Im λ at the origin and the channel is rank one.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

import diffrax_sntk as ds

from ._config import StudentTeacherConfig

__all__ = ["RotationCTRNN", "task_setup", "task_param_spec"]


class RotationCTRNN(eqx.Module):
    r"""A CTRNN ẋ = −x + W tanh(x) + U u + b, y = C x + d, with
    W = B · blockdiag([[g, −ω], [ω, g]], bulk) · Bᵀ.

    **Fields:** `basis` B `(N, N)` orthonormal (columns 0, 1 span the rotation plane), `gain` g,
    `omega` ω, `bulk` `(N − 2, N − 2)`, `U`, `b`, `C`, `d` as in `ds.CTRNN`.
    """

    basis: Float[Array, "state state"]
    gain: Float[Array, ""]
    omega: Float[Array, ""]
    bulk: Float[Array, "rest rest"]
    U: Float[Array, "state input"]
    b: Float[Array, " state"]
    C: Float[Array, "output state"]
    d: Float[Array, " output"]

    @property
    def W(self) -> Float[Array, "state state"]:
        n = self.basis.shape[0]
        block = jnp.zeros((n, n), self.bulk.dtype)
        plane = jnp.stack([jnp.stack([self.gain, -self.omega]),
                           jnp.stack([self.omega, self.gain])])
        block = block.at[:2, :2].set(plane).at[2:, 2:].set(self.bulk)
        return self.basis @ block @ self.basis.T

    def __call__(self, t, x, u=None):
        drive = self.W @ jnp.tanh(x) + self.b
        if u is not None:
            drive = drive + self.U @ u
        return drive - x

    def readout(self, x):
        return self.C @ x + self.d


def _unit(v):
    return v / jnp.linalg.norm(v)


def _random_bulk(key, q, gain, n):
    proj = jnp.eye(n) - jnp.outer(q, q)
    return proj @ ((gain / jnp.sqrt(n)) * jr.normal(key, (n, n))) @ proj


def _fold_setup(cfg: StudentTeacherConfig, key, template: ds.CTRNN):
    n = cfg.hidden
    kq, kbulk, ks, ksb, ku = jr.split(key, 5)
    readout = jnp.eye(cfg.outputs, n)

    def make(W, U, b):
        return eqx.tree_at(lambda m: (m.W, m.U, m.C, m.b, m.d), template,
                           (W, U, readout, b, jnp.zeros(cfg.outputs)))

    h = cfg.bias
    if cfg.student == "shared":
        basis, _ = jnp.linalg.qr(jr.normal(kq, (n, n)))
        q = basis[:, 0]
        radii = jnp.linspace(cfg.bulk_radius, -cfg.bulk_radius, n - 1)
        bulk = basis[:, 1:] @ jnp.diag(radii) @ basis[:, 1:].T
        teacher = make(cfg.teacher_gain * jnp.outer(q, q) + bulk, q[:, None], h * q)
        student = make(cfg.student_gain * jnp.outer(q, q) + bulk, q[:, None], h * q)
    else:
        q = _unit(jr.normal(kq, (n,)))
        W_T = cfg.teacher_gain * jnp.outer(q, q) + _random_bulk(kbulk, q, cfg.bulk_gain, n)
        teacher = make(W_T, q[:, None], h * q)
        q_s = _unit(jr.normal(ks, (n,)))
        W_S = cfg.student_gain * jnp.outer(q_s, q_s) + _random_bulk(ksb, q_s, cfg.bulk_gain, n)
        student = make(W_S, _unit(jr.normal(ku, (n,)))[:, None], h * q_s)
    return teacher, student


def _hopf_setup(cfg: StudentTeacherConfig, key):
    n = cfg.hidden
    kb, kbulk, ks, ksb, ku = jr.split(key, 5)
    dtype = jnp.result_type(float)
    readout = jnp.eye(cfg.outputs, n, dtype=dtype)

    def make(basis, gain, omega, bulk, U):
        return RotationCTRNN(basis=basis, gain=jnp.asarray(gain, dtype),
                             omega=jnp.asarray(omega, dtype), bulk=bulk, U=U,
                             b=jnp.zeros(n, dtype), C=readout, d=jnp.zeros(cfg.outputs, dtype))

    def random_bulk(k):
        return (cfg.bulk_gain / jnp.sqrt(n)) * jr.normal(k, (n - 2, n - 2), dtype)

    basis, _ = jnp.linalg.qr(jr.normal(kb, (n, n), dtype))
    # The input drives the plane (along its first axis), so pulses set the oscillation's phase.
    if cfg.student == "shared":
        bulk = jnp.diag(jnp.linspace(cfg.bulk_radius, -cfg.bulk_radius, n - 2).astype(dtype))
        U = basis[:, :1]
        teacher = make(basis, cfg.teacher_gain, cfg.omega_teacher, bulk, U)
        student = make(basis, cfg.student_gain, cfg.omega_student, bulk, U)
    else:
        teacher = make(basis, cfg.teacher_gain, cfg.omega_teacher, random_bulk(kbulk),
                       basis[:, :1])
        basis_s, _ = jnp.linalg.qr(jr.normal(ks, (n, n), dtype))
        student = make(basis_s, cfg.student_gain, cfg.omega_student, random_bulk(ksb),
                       _unit(jr.normal(ku, (n,), dtype))[:, None])
    return teacher, student


def task_setup(cfg: StudentTeacherConfig, key, template: ds.CTRNN):
    """(teacher, student) of the fold or Hopf task for one seed's key (pure; vmappable)."""
    if cfg.task == "fold":
        return _fold_setup(cfg, key, template)
    if cfg.task == "hopf":
        return _hopf_setup(cfg, key)
    raise ValueError(f"`task` must be \"fold\" or \"hopf\" here, got {cfg.task!r}.")


def task_param_spec(cfg: StudentTeacherConfig, model):
    """`filter_spec` of the trained fields of `model` (any task)."""
    spec = jax.tree_util.tree_map(lambda _: False, model)
    for name in cfg.trained:
        spec = eqx.tree_at(lambda m, name=name: getattr(m, name), spec, True)
    return spec


def autonomous_field(x, model):
    """The model's autonomous dynamics (input u = 0) — the vector field whose equilibria and
    bifurcations are tracked along training (module level, so one compilation is shared)."""
    return model(0.0, x, jnp.zeros(model.U.shape[1], x.dtype))
