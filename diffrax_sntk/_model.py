"""Continuous-time models: the vector-field protocol, a CTRNN, and a wrapper for plain diffrax
vector fields.

A *model* is any `equinox.Module` whose `__call__(self, t, x, u)` returns dx/dt, where `u` is the
input at time `t` (or `None` when the problem has no inputs). It may define `readout(self, x)`.
Its trainable parameters are its inexact array leaves (`eqx.is_inexact_array`) unless a filter
says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

__all__ = ["CTRNN", "VectorField", "has_readout"]


class CTRNN(eqx.Module):
    r"""Continuous-time recurrent neural network.

    $$\tau \frac{dx}{dt} = -x + W \phi(x) + U u(t) + b, \qquad y = C x + d.$$

    `tau` and `activation` are configuration, not parameters; `W`, `b` (and `U`, `C`, `d` when
    present) are the trainable parameters.
    """

    W: Float[Array, "state state"]
    b: Float[Array, " state"]
    U: Float[Array, "state input"] | None
    C: Float[Array, "output state"] | None
    d: Float[Array, " output"] | None
    activation: Callable[[Array], Array] = eqx.field(static=True)
    tau: float = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int = 0,
        output_size: int = 0,
        *,
        key: PRNGKeyArray,
        activation: Callable[[Array], Array] = jnp.tanh,
        tau: float = 1.0,
        gain: float = 0.9,
        dtype: Any = None,
    ):
        """**Arguments:**

        - `hidden_size`: state dimension N.
        - `input_size`: input dimension M (0 for an autonomous network).
        - `output_size`: readout dimension (0 for no readout).
        - `key`: PRNG key for the initialisation.
        - `activation`: elementwise nonlinearity φ (odd φ makes the origin Z2-symmetric).
        - `tau`: time constant τ > 0.
        - `gain`: recurrent weights are drawn `W ~ N(0, gain²/N)`.
        - `dtype`: floating dtype of the parameters (default: JAX's default float).
        """
        for name, value in (
            ("hidden_size", hidden_size),
            ("input_size", input_size),
            ("output_size", output_size),
        ):
            if not isinstance(value, int) or value < 0 or (name == "hidden_size" and value == 0):
                raise ValueError(
                    f"`{name}` must be a non-negative int (hidden_size > 0), got {value!r}."
                )
        if not tau > 0:
            raise ValueError(f"`tau` must be positive, got {tau!r}.")
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        wkey, ukey, ckey = jr.split(key, 3)
        n = hidden_size
        self.W = (gain / jnp.sqrt(n)) * jr.normal(wkey, (n, n), dtype)
        self.b = jnp.zeros((n,), dtype)
        self.U = (
            jr.normal(ukey, (n, input_size), dtype) / jnp.sqrt(input_size)
            if input_size > 0
            else None
        )
        if output_size > 0:
            self.C = jr.normal(ckey, (output_size, n), dtype) / jnp.sqrt(n)
            self.d = jnp.zeros((output_size,), dtype)
        else:
            self.C = None
            self.d = None
        self.activation = activation
        self.tau = float(tau)

    @property
    def hidden_size(self) -> int:
        return self.W.shape[0]

    @property
    def input_size(self) -> int:
        return 0 if self.U is None else self.U.shape[1]

    def __call__(self, t, x: Float[Array, " state"], u: Float[Array, " input"] | None = None):
        drive = self.W @ self.activation(x) + self.b
        if self.U is not None:
            if u is None:
                raise ValueError(
                    "This `CTRNN` has `input_size > 0` but the problem provides no `inputs`."
                )
            drive = drive + self.U @ u
        return (drive - x) / self.tau

    def readout(self, x: Float[Array, " state"]) -> Float[Array, " output"]:
        if self.C is None:
            raise ValueError("This `CTRNN` was built with `output_size=0` and has no readout.")
        assert self.d is not None
        return self.C @ x + self.d


class VectorField(eqx.Module):
    """Wraps an existing diffrax vector field `f(t, y, args)` as a model, unchanged.

    The parameters are the inexact arrays inside `args`. If `f` also needs the input, pass
    `takes_input=True`; then it is called as `f(t, y, (args, u))`.

    ```python
    model = ds.VectorField(f, args)          # f is what `diffrax.ODETerm(f)` already used
    Theta = ds.sntk_operator(model, problem)
    ```
    """

    fn: Callable = eqx.field(static=True)
    args: PyTree
    readout_fn: Callable | None = eqx.field(static=True)
    takes_input: bool = eqx.field(static=True)

    def __init__(
        self,
        fn: Callable,
        args: PyTree = None,
        *,
        readout: Callable | None = None,
        takes_input: bool = False,
    ):
        """**Arguments:**

        - `fn`: a diffrax-style vector field `fn(t, y, args) -> dy/dt`.
        - `args`: its parameters (any pytree; inexact array leaves are trained).
        - `readout`: optional `readout(y, args) -> output`.
        - `takes_input`: call `fn(t, y, (args, u))` so that the problem's inputs reach `fn`.
        """
        if not callable(fn):
            raise TypeError(f"`fn` must be callable `fn(t, y, args)`, got {type(fn).__name__}.")
        if readout is not None and not callable(readout):
            raise TypeError("`readout` must be callable `readout(y, args)` or None.")
        self.fn = fn
        self.args = args
        self.readout_fn = readout
        self.takes_input = bool(takes_input)

    def __call__(self, t, x, u=None):
        if self.takes_input:
            return self.fn(t, x, (self.args, u))
        return self.fn(t, x, self.args)

    def readout(self, x):
        if self.readout_fn is None:
            raise ValueError("This `VectorField` was built without `readout=`.")
        return self.readout_fn(x, self.args)


def has_readout(model: Any) -> bool:
    """Whether `model` has a usable `readout(x)` method."""
    if isinstance(model, CTRNN):
        return model.C is not None
    if isinstance(model, VectorField):
        return model.readout_fn is not None
    return callable(getattr(model, "readout", None))
