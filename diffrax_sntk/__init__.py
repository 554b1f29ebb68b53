"""State-space NTK operators, spectral analysis, bifurcations and low-rank natural gradients
for diffrax models.

Public API: everything importable from `diffrax_sntk`. Implementation modules are private.
"""

import importlib.metadata

# --- failure codes
from ._misc import RESULTS as RESULTS

# --- models and trajectory problems
from ._model import CTRNN as CTRNN, VectorField as VectorField
from ._problem import TrajectoryProblem as TrajectoryProblem, simulate as simulate

# --- operators
from ._operators import (
    PairedLinearOperator as PairedLinearOperator,
    jacobian_operator as jacobian_operator,
    sntk_operator as sntk_operator,
    trajectory_and_jacobian as trajectory_and_jacobian,
)
from ._kpflow import (
    adjoint_propagator as adjoint_propagator,
    parameter_operator as parameter_operator,
    propagator as propagator,
    quadrature_grid as quadrature_grid,
)

# --- spectral toolkit
from ._partial_trace import partial_trace as partial_trace
from ._spectral import Eigenpairs as Eigenpairs
from ._spectral import top_eigenpairs as top_eigenpairs
from ._trace_estimators import alignment as alignment
from ._trace_estimators import effective_rank as effective_rank
from ._trace_estimators import Estimate as Estimate
from ._trace_estimators import frobenius_norm_squared as frobenius_norm_squared
from ._trace_estimators import trace as trace

# --- fixed points, bifurcations, normal forms
from ._bifurcation import Bifurcation as Bifurcation
from ._bifurcation import BifurcationEvents as BifurcationEvents
from ._bifurcation import Branch as Branch
from ._bifurcation import continuation as continuation
from ._branch_switching import switch_branch as switch_branch
from ._diagram import BifurcationDiagram as BifurcationDiagram
from ._diagram import FailedSwitch as FailedSwitch
from ._diagram import bifurcation_diagram as bifurcation_diagram
from ._fixed_points import FixedPoints as FixedPoints
from ._fixed_points import Spectrum as Spectrum
from ._fixed_points import find_fixed_points as find_fixed_points
from ._deflation import Deflation as Deflation
from ._bifurcation_point import bifurcation_point as bifurcation_point
from ._periodic import PeriodicOrbit as PeriodicOrbit
from ._periodic import find_periodic_orbit as find_periodic_orbit
from ._periodic import hopf_cycle_predictor as hopf_cycle_predictor
from ._periodic import periodic_orbit_from_hopf as periodic_orbit_from_hopf
from ._periodic import periodic_orbit_trajectory as periodic_orbit_trajectory
from ._cycles_continuation import CycleBifurcation as CycleBifurcation
from ._cycles_continuation import CycleBranch as CycleBranch
from ._cycles_continuation import CycleEvents as CycleEvents
from ._cycles_continuation import continue_periodic_orbit as continue_periodic_orbit
from ._cycles_tracking import CycleTrack as CycleTrack
from ._cycles_tracking import CycleTrackEvent as CycleTrackEvent
from ._cycles_tracking import track_periodic_orbits as track_periodic_orbits
from ._fixed_points import jacobian_spectrum as jacobian_spectrum
from ._normal_form_types import AbstractNormalForm as AbstractNormalForm
from ._normal_form_types import BranchPointNormalForm as BranchPointNormalForm
from ._normal_form_types import FoldNormalForm as FoldNormalForm
from ._normal_form_types import HopfNormalForm as HopfNormalForm
from ._normal_forms import lyapunov_coefficient as lyapunov_coefficient
from ._normal_forms import normal_form_coefficients as normal_form_coefficients
from ._tracking import BifurcationTrack as BifurcationTrack
from ._births import Ghosts as Ghosts
from ._tracking import track_bifurcations as track_bifurcations

# --- analysing a trained RNN
from ._rnn_analysis import FixedPointAnalysis as FixedPointAnalysis
from ._rnn_analysis import analyse_fixed_points as analyse_fixed_points
from ._rnn_analysis import sample_states as sample_states
from ._checkpoints import SNTKCheckpoints as SNTKCheckpoints
from ._checkpoints import sntk_over_checkpoints as sntk_over_checkpoints

# --- bifurcation channels
from ._channel_types import BifurcationChannels as BifurcationChannels
from ._channel_types import ChannelDiagnostics as ChannelDiagnostics
from ._channel_types import ChannelSplit as ChannelSplit
from ._channel_types import CriticalMode as CriticalMode
from ._channels import bifurcation_channels as bifurcation_channels
from ._landscape import RestrictedLandscape as RestrictedLandscape
from ._landscape import fit_normal_form_landscape as fit_normal_form_landscape
from ._landscape import restricted_landscape as restricted_landscape

# --- natural gradient
from ._natgrad import LowRankNaturalGradientState as LowRankNaturalGradientState
from ._natgrad import low_rank_natural_gradient as low_rank_natural_gradient
from ._natgrad import scale_by_low_rank_natural_gradient as scale_by_low_rank_natural_gradient

# --- sharding
from ._sharding import shard_trials as shard_trials

__version__ = importlib.metadata.version("diffrax_sntk")
