"""State-space NTK operators, spectral analysis, bifurcations and low-rank natural gradients
for diffrax models.

Public API: everything importable from `diffrax_sntk`. Implementation modules are private.
"""

import importlib.metadata

# --- models and trajectory problems
from ._model import CTRNN as CTRNN, VectorField as VectorField
from ._problem import TrajectoryProblem as TrajectoryProblem, simulate as simulate

# --- operators
from ._operators import (
    PairedLinearOperator as PairedLinearOperator,
    adjoint_propagator as adjoint_propagator,
    jacobian_operator as jacobian_operator,
    parameter_operator as parameter_operator,
    propagator as propagator,
    quadrature_grid as quadrature_grid,
    sntk_operator as sntk_operator,
)

# --- spectral toolkit (issue 3)

# --- fixed points, bifurcations, normal forms (issue 4)

# --- bifurcation channels (issue 5)

# --- natural gradient (issue 6)

__version__ = importlib.metadata.version("diffrax_sntk")
