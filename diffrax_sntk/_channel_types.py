r"""Result types of [`bifurcation_channels`][diffrax_sntk.bifurcation_channels]: the split Θ =
Θ_bif + Θ_res, the critical mode and the diagnostics, grouped in `BifurcationChannels` (which
keeps every field of the earlier flat result readable under its old name)."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Bool, Complex, Float, Int, PyTree

from ._misc import RESULTS
from ._operators import PairedLinearOperator

__all__ = ["BifurcationChannels", "ChannelDiagnostics", "ChannelSplit", "CriticalMode"]


class ChannelSplit(eqx.Module):
    r"""The exact split Θ = Θ_bif + Θ_res, its factors and the traces and ratios built on them.

    **Fields:**

    - `bifurcation`, `residual`, `sntk`: Θ_bif = J Π_U Jᵀ, Θ_res = J (I − Π_U) Jᵀ and Θ = J Jᵀ as
        lineax operators (symmetric, PSD); `bifurcation + residual = sntk` exactly.
    - `restricted`: the restricted sNTK (J u1)(J u1)ᵀ along the dominant direction u1.
    - `basis`: U, leading axis 4, orthonormal; the first `rank` rows span the channel, the others
        are zero. `rank`: the number of independent channel directions.
    - `factors`: J U, leading axis 4 (Θ_bif = Σ_j f_j f_jᵀ).
    - `trace`, `channel_trace`: tr Θ and tr Θ_bif; `energy_fraction` = tr Θ_bif / tr Θ.
    - `channel_eigenvalues`: the eigenvalues of Θ_bif (descending, 4, zeros past `rank`);
        `channel_eigenvector`: its top eigenvector.
    - `top_eigenvalue`, `residual_top_eigenvalue`: λ_max(Θ) and λ_max(Θ_res);
        `amplification` = λ_max(Θ_bif) / λ_max(Θ_res) (`inf` when Θ_res = 0).
    - `channel_rank`: the numerical rank of Θ_bif: the number of `channel_eigenvalues` at least
        `channel_rank_tol` times the largest (0 when Θ_bif = 0). Unlike `rank` (how many
        independent parameter directions span U), it counts the *responses* J U that are of
        comparable size: the theory expects 1 at a fold or pitchfork (the forcing response
        dominates the eigenvalue one near the crossing) and 2 at a Hopf whose frequency is
        trained (dz/dμ and dz/dω orthogonal and of equal norm). The rank also depends on the
        trials: in a CTRNN both real channel directions force the state along the same left
        vector w, so trials resting together at one state give exactly 1, and trials that
        move by O(1) through the fold region can give 2 (measured: `docs/fold_hopf_tasks.md`,
        "fold-channel probe").
        `channel_rank_tol` is on the parent `BifurcationChannels`.
    """

    bifurcation: PairedLinearOperator
    residual: PairedLinearOperator
    sntk: PairedLinearOperator
    restricted: PairedLinearOperator
    basis: PyTree
    rank: Int[Array, ""]
    factors: Float[Array, "4 batch time state"]
    trace: Float[Array, ""]
    channel_trace: Float[Array, ""]
    energy_fraction: Float[Array, ""]
    channel_eigenvalues: Float[Array, " 4"]
    channel_eigenvector: Float[Array, "batch time state"]
    top_eigenvalue: Float[Array, ""]
    residual_top_eigenvalue: Float[Array, ""]
    amplification: Float[Array, ""]
    channel_rank: Int[Array, ""]


class CriticalMode(eqx.Module):
    r"""The critical mode of A = ∂f/∂x at the point and its parameter directions.

    **Fields:**

    - `state`: x*; `fixed_point_residual`: ‖f(x*)‖₂.
    - `eigenvalue`: λ_c; `right_eigenvector`: v (unit norm, largest entry real positive);
        `left_eigenvector`: w (wᵀv = 1); `is_complex`: λ_c is one of a complex pair.
    - `gap_ratio`: |Re λ_c| / min |Re λ_j| over the non-critical eigenvalues (0 when there are
        none); small means the mode is well separated from the rest of the spectrum.
    - `forcing_direction`: g_f = (∂f/∂θ)ᵀ w, leading axis 2 (real part, imaginary part; the
        imaginary part is zero for a real critical eigenvalue).
    - `eigenvalue_direction`: g_λ = ∇_θ λ_c = wᵀ(∂_θ A)v, leading axis 2 (∇ Re λ_c, ∇ Im λ_c).

    Parameter-space directions are pytrees shaped like the model's parameters.
    """

    state: Float[Array, " state"]
    fixed_point_residual: Float[Array, ""]
    eigenvalue: Complex[Array, ""]
    right_eigenvector: Complex[Array, " state"]
    left_eigenvector: Complex[Array, " state"]
    is_complex: Bool[Array, ""]
    gap_ratio: Float[Array, ""]
    forcing_direction: PyTree
    eigenvalue_direction: PyTree


class ChannelDiagnostics(eqx.Module):
    r"""How far Θ is dominated by the channel, and how well the normal form predicts it.

    **Fields:**

    - `top_eigenvector`: the top eigenvector v1 of Θ.
    - `effective_rank`: participation ratio (tr Θ)² / tr Θ² (exact with `method="dense"`).
    - `alignment`: |cos| between the top eigenvectors of Θ and of Θ_bif.
    - `subspace_alignment`: the norm of the projection of v1 onto the range of Θ_bif (1 when it
        lies in the channel).
    - `dominant_direction`: u1, the top eigenvector of JᵀJ (u1 ∝ Jᵀ v1), leading axis 1;
        `dominant_overlap`: ‖Π_U u1‖ (1 when u1 lies in the channel).
    - `profile_computed`: J ĝ_f, the response to the unit forcing direction ĝ_f = Re g_f/‖Re g_f‖.
    - `profile_predicted`: the normal-form prediction c·e(t)·v with c = wᵀ(∂f/∂θ)ĝ_f and
        e(t) = (e^{λ_c (t − t0)} − 1)/λ_c (= (1 − e^{λ_c t})/|λ_c| for λ_c < 0, t0 = 0); twice the
        real part for a complex pair. It assumes every trial starts at x*.
    - `profile_error`: ‖profile_computed − profile_predicted‖ / ‖profile_computed‖ (NaN when
        Re g_f = 0: there is no forcing direction to compare).
    - `residual_too_large`: ‖f(x*)‖ > `residual_tol` (x* is not a fixed point).
    - `far_from_critical`: `gap_ratio` > `gap_tol`.
    - `eigensolver_converged`: the matrix-free eigensolves met their tolerance (always true for
        `method="dense"`).
    """

    top_eigenvector: Float[Array, "batch time state"]
    effective_rank: Float[Array, ""]
    alignment: Float[Array, ""]
    subspace_alignment: Float[Array, ""]
    dominant_direction: PyTree
    dominant_overlap: Float[Array, ""]
    profile_computed: Float[Array, "batch time state"]
    profile_predicted: Float[Array, "batch time state"]
    profile_error: Float[Array, ""]
    residual_too_large: Bool[Array, ""]
    far_from_critical: Bool[Array, ""]
    eigensolver_converged: Bool[Array, ""]


def _alias(group: str, name: str) -> property:
    return property(
        lambda self: getattr(getattr(self, group), name), doc=f"Same as `{group}.{name}`."
    )


class BifurcationChannels(eqx.Module):
    r"""Result of [`bifurcation_channels`][diffrax_sntk.bifurcation_channels].

    All state-space arrays have the sNTK's shape `(batch, time, state)`; parameter-space
    directions are pytrees shaped like the model's parameters (`eqx.filter(model,
    eqx.is_inexact_array)`) with a leading axis. Jittable (returned from `eqx.filter_jit`) and
    vmappable (`eqx.filter_vmap`, over points or parameters).

    **Fields:**

    - `split`: a [`ChannelSplit`][diffrax_sntk.ChannelSplit]: Θ_bif, Θ_res, Θ and the restricted
        sNTK as operators, the basis U and factors J U, traces, energy fraction, top
        eigenvalues, amplification.
    - `mode`: a [`CriticalMode`][diffrax_sntk.CriticalMode]: x*, λ_c, v, w, the gap ratio and the
        forcing and eigenvalue directions.
    - `diagnostics`: a [`ChannelDiagnostics`][diffrax_sntk.ChannelDiagnostics]: effective rank,
        alignments and overlaps, the normal-form time profile, the flags behind `warnings`.
    - `result`: a [`ds.RESULTS`][diffrax_sntk.RESULTS] item: `successful`; `no_fixed_point`
        (a `FixedPoints` input with no converged entry, or ‖f(x*)‖ > `residual_tol`: the channel
        directions are those of a linearisation at a non-equilibrium); `eigensolver_max_restarts`
        (matrix-free eigensolves did not converge); `nonfinite` (NaN or inf in Θ's spectra or
        the channel factors). The split is exact whatever the result.
    - `residual_tol`, `gap_tol`: the thresholds used for the flags.
    - `channel_rank_tol`: the relative eigenvalue threshold behind `split.channel_rank`.

    Every field of the flat result of earlier versions is still readable under its old name
    (`split.energy_fraction`, `split.critical_eigenvalue`, `split.restricted`, ...), as a
    property forwarding to the group that holds it.
    """

    split: ChannelSplit
    mode: CriticalMode
    diagnostics: ChannelDiagnostics
    result: RESULTS
    residual_tol: float = eqx.field(static=True)
    gap_tol: float = eqx.field(static=True)
    channel_rank_tol: float = eqx.field(static=True, default=0.1)

    bifurcation = _alias("split", "bifurcation")
    residual = _alias("split", "residual")
    sntk = _alias("split", "sntk")
    restricted = _alias("split", "restricted")
    basis = _alias("split", "basis")
    rank = _alias("split", "rank")
    energy_fraction = _alias("split", "energy_fraction")
    channel_eigenvalues = _alias("split", "channel_eigenvalues")
    channel_eigenvector = _alias("split", "channel_eigenvector")
    top_eigenvalue = _alias("split", "top_eigenvalue")
    residual_top_eigenvalue = _alias("split", "residual_top_eigenvalue")
    amplification = _alias("split", "amplification")
    channel_rank = _alias("split", "channel_rank")
    state = _alias("mode", "state")
    fixed_point_residual = _alias("mode", "fixed_point_residual")
    critical_eigenvalue = _alias("mode", "eigenvalue")
    right_eigenvector = _alias("mode", "right_eigenvector")
    left_eigenvector = _alias("mode", "left_eigenvector")
    gap_ratio = _alias("mode", "gap_ratio")
    forcing_direction = _alias("mode", "forcing_direction")
    eigenvalue_direction = _alias("mode", "eigenvalue_direction")
    top_eigenvector = _alias("diagnostics", "top_eigenvector")
    effective_rank = _alias("diagnostics", "effective_rank")
    alignment = _alias("diagnostics", "alignment")
    subspace_alignment = _alias("diagnostics", "subspace_alignment")
    dominant_direction = _alias("diagnostics", "dominant_direction")
    dominant_overlap = _alias("diagnostics", "dominant_overlap")
    profile_computed = _alias("diagnostics", "profile_computed")
    profile_predicted = _alias("diagnostics", "profile_predicted")
    profile_error = _alias("diagnostics", "profile_error")
    residual_too_large = _alias("diagnostics", "residual_too_large")
    far_from_critical = _alias("diagnostics", "far_from_critical")

    @property
    def successful(self) -> Bool[Array, "..."]:
        """`result == RESULTS.successful` (an array; batched under `vmap`)."""
        return self.result == RESULTS.successful

    @property
    def warnings(self) -> tuple[str, ...]:
        """Why the split may not mean what its name says: the result's failure and the
        diagnostics' flags, as human-readable strings (host-side, for an unbatched result; call
        outside `jit`). Empty when the interpretation as "the bifurcation channel" is justified;
        the split itself is always exact."""
        out = []
        if bool(self.diagnostics.residual_too_large) or self.result == RESULTS.no_fixed_point:
            out.append(
                f"critical point is not a fixed point of the model: ‖f(x*)‖ = "
                f"{float(self.mode.fixed_point_residual):.3g} (residual_tol = "
                f"{self.residual_tol:.3g}). The channel directions are those of the "
                "linearisation at this state, which is not an equilibrium; pass a converged "
                "fixed point (ds.find_fixed_points)."
            )
        elif not bool(self.successful):
            out.append(RESULTS[self.result])
        if bool(self.diagnostics.far_from_critical):
            lam = complex(self.mode.eigenvalue)
            out.append(
                f"leading eigenvalue λ_c = {lam.real:.3g}{lam.imag:+.3g}i is far from the "
                "imaginary axis relative to the rest of the spectrum: "
                f"|Re λ_c| / min|Re λ_other| = {float(self.mode.gap_ratio):.3g} > gap_tol = "
                f"{self.gap_tol:.3g}. The split is exact, "
                "but Θ need not be dominated by the bifurcation channel here."
            )
        return tuple(out)
