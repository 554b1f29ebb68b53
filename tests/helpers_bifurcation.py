"""Small vector fields shared by the fixed-point, bifurcation and normal-form tests.

They are `eqx.Module`s with array fields so that one compilation serves every coefficient value.
"""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array


class Poly1D(eqx.Module):
    """ẋ = c0·μ + c1·μ·x + c2·x² + c3·x³ (fold, transcritical, pitchfork normal forms)."""

    c: Array

    def __call__(self, x, mu):
        c = self.c
        return c[0] * mu + c[1] * mu * x + c[2] * x**2 + c[3] * x**3


FOLD = Poly1D(jnp.array([1.0, 0.0, -1.0, 0.0]))  # μ − x²
TRANSCRITICAL = Poly1D(jnp.array([0.0, 1.0, -1.0, 0.0]))  # μx − x²
PITCHFORK_SUPER = Poly1D(jnp.array([0.0, 1.0, 0.0, -1.0]))  # μx − x³
PITCHFORK_SUB = Poly1D(jnp.array([0.0, 1.0, 0.0, 1.0]))  # μx + x³


class StuartLandau(eqx.Module):
    """ẋ = μx − y + σ·x(x²+y²), ẏ = x + μy + σ·y(x²+y²); σ = −1 is supercritical."""

    sigma: Array

    def __call__(self, x, mu):
        r2 = x[0] ** 2 + x[1] ** 2
        return jnp.stack(
            [mu * x[0] - x[1] + self.sigma * x[0] * r2, x[0] + mu * x[1] + self.sigma * x[1] * r2]
        )


class GainCTRNN(eqx.Module):
    """ẋ = −x + g·W0 tanh(x), parameter g."""

    w0: Array

    def __call__(self, x, g):
        return -x + g * (self.w0 @ jnp.tanh(x))


class RotationCTRNN(eqx.Module):
    """ẋ = −x + W tanh(x), W = [[a, −b], [b, a]], parameter a."""

    b: Array

    def __call__(self, x, a):
        w = jnp.array([[a, -self.b], [self.b, a]])
        return -x + w @ jnp.tanh(x)


def scalar_ctrnn(x, g):
    """ẋ = −x + g·tanh(x) (elementwise; use N = 1)."""
    return -x + g * jnp.tanh(x)


def gain_model(x, params):
    """ẋ = −x + g·D·tanh(x) with params {"g": scalar, "d": (N,)}: Z2-symmetric."""
    return -x + params["g"] * params["d"] * jnp.tanh(x)


def random_w0(key, n):
    return jr.normal(key, (n, n)) / jnp.sqrt(n)
