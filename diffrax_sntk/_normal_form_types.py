"""Result types of the normal-form computations: one `eqx.Module` per codimension-one bifurcation
of equilibria, each carrying its coefficients, a `RESULTS` code and the convention the
coefficients are defined in (see `docs/bifurcations.md`)."""

import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool, Complex, Float

from ._misc import RESULTS, successful

BRANCH_POINT_CONVENTION = (
    "zero eigenvalue of A = df/dx: q unit right null vector (largest-|entry| component positive), "
    "p left null vector with p^T q = 1; centre-manifold reduced equation "
    "dw/dt = a*dmu + b1*dmu*w + (b2/2)*w^2 + (b3/6)*w^3 with a = p^T f_mu, "
    "b1 = p^T(A_mu q + B(q, h_mu)), b2 = p^T B(q, q), b3 = p^T(C(q, q, q) + 3 B(q, h_2)), where "
    "A h_mu = -(f_mu - a q), A h_2 = -(B(q, q) - b2 q), p^T h = 0 (b3 exact when b2 = 0)"
)
FOLD_CONVENTION = BRANCH_POINT_CONVENTION + "; fold coefficient a_f = (1/2) p^T B(q, q) = b2/2"
HOPF_CONVENTION = (
    "MatCont/BifurcationKit: A q = i*omega*q with omega > 0 and ||q|| = 1, A^T p = -i*omega*p with "
    "<p, q> = conj(p)^T q = 1; c1 = (1/2)<p, C(q, q, conj q) - 2 B(q, A^-1 B(q, conj q)) "
    "+ B(conj q, (2 i omega I - A)^-1 B(q, q))>; l1 = Re c1 (negative => supercritical); "
    "Kuznetsov's l1 is Re(c1)/omega"
)


def _successful_default():
    return RESULTS.successful


class AbstractNormalForm(eqx.Module):
    """Normal-form coefficients of a codimension-one bifurcation, with their convention.

    Every subclass has a `result` field: `RESULTS.successful`, `RESULTS.not_a_bifurcation` (no
    critical eigenvalue of the requested type), or a linear solve's failure (e.g.
    `RESULTS.singular`, `RESULTS.singular_linear_solve`: a degenerate point).
    """

    @property
    def convention(self) -> str:
        raise NotImplementedError

    @property
    def criticality(self) -> str | None:
        """`"supercritical"`, `"subcritical"`, or `None` where the notion does not apply."""
        return None

    @property
    def successful(self) -> Bool[Array, "*batch"]:
        return successful(self.result)  # pyright: ignore[reportAttributeAccessIssue]


class FoldNormalForm(AbstractNormalForm):
    """Fold (saddle-node): `ẇ = a·δμ + a_f·w² + …`, with `a_f = ½ pᵀB(q, q)`.

    **Fields:** `a = pᵀ f_μ`, `a_f`, `b1`, `b2 = 2 a_f` (see `convention`), `result`.
    """

    a: Float[Array, ""]
    a_f: Float[Array, ""]
    b1: Float[Array, ""]
    b2: Float[Array, ""]
    result: RESULTS = eqx.field(default_factory=_successful_default)

    @property
    def convention(self) -> str:
        return FOLD_CONVENTION


class BranchPointNormalForm(AbstractNormalForm):
    """Branch point (transcritical, pitchfork): `ẇ = a·δμ + b1·δμ·w + (b2/2)·w² + (b3/6)·w³`.

    `symmetric` (a boolean array) says `b2` vanishes relative to the other coefficients (a
    pitchfork). `criticality` is that of a pitchfork (`b3 < 0` ⇒ supercritical); `None` when
    `b2 ≠ 0` or the result is a failure.
    """

    a: Float[Array, ""]
    b1: Float[Array, ""]
    b2: Float[Array, ""]
    b3: Float[Array, ""]
    symmetric: Bool[Array, ""] | bool = False
    result: RESULTS = eqx.field(default_factory=_successful_default)

    @property
    def convention(self) -> str:
        return BRANCH_POINT_CONVENTION

    @property
    def criticality(self) -> str | None:
        if not bool(self.symmetric) or not bool(self.successful):
            return None
        b3 = float(self.b3)
        if not np.isfinite(b3):
            return None
        return "supercritical" if b3 < 0 else "subcritical"


class HopfNormalForm(AbstractNormalForm):
    """Hopf: frequency `omega`, complex `c1`, first Lyapunov coefficient `l1 = Re c1`
    (MatCont/BifurcationKit convention; negative ⇒ supercritical), the transversality
    coefficient `transversality = dRe λ/dμ` along the equilibrium branch, and `result`.
    """

    omega: Float[Array, ""]
    c1: Complex[Array, ""]
    l1: Float[Array, ""]
    transversality: Float[Array, ""]
    result: RESULTS = eqx.field(default_factory=_successful_default)

    @property
    def convention(self) -> str:
        return HOPF_CONVENTION

    @property
    def criticality(self) -> str | None:
        if not bool(self.successful):
            return None
        l1 = float(self.l1)
        if not np.isfinite(l1) or l1 == 0:
            return None
        return "supercritical" if l1 < 0 else "subcritical"
