"""Benchmark: tracking equilibria and bifurcations over 1,000 checkpoints of an N = 128 CTRNN.

    python benchmarks/bifurcations.py [--checkpoints 1000] [--size 128]

The checkpoints mimic a training run: W_k = g_k·W0 + drift_k, with the gain g_k rising through the
first instability of the origin, so the track reports (about) one bifurcation. Prints the wall
time of the first call (compilation included) and of a second call (compiled).
"""

import argparse
import os
import time

# Many-threaded BLAS inside LAPACK's nonsymmetric eig oversubscribes small machines badly (measured
# 50x slower for 128 x 128 on a loaded 2-core box); one BLAS thread per process is faster here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import diffrax_sntk as ds  # noqa: E402


def vector_field(x, params):
    return -x + params["w"] @ jnp.tanh(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    k, n = args.checkpoints, args.size
    key_w, key_d, key_x = jr.split(jr.PRNGKey(0), 3)
    w0 = jr.normal(key_w, (n, n)) / jnp.sqrt(n)
    g_star = 1 / float(np.max(np.linalg.eigvals(np.asarray(w0)).real))
    gains = jnp.linspace(0.8 * g_star, 1.05 * g_star, k)
    drift = 1e-3 * jnp.cumsum(jr.normal(key_d, (k, n, n)), axis=0) / jnp.sqrt(n * k)
    params = {"w": gains[:, None, None] * w0 + drift}
    starts = 0.1 * jr.normal(key_x, (4, n))
    print(f"jax {jax.__version__}, devices {jax.devices()}, N = {n}, checkpoints = {k}")
    for label in ("first call (with compilation)", "second call"):
        t0 = time.perf_counter()
        track = ds.track_bifurcations(vector_field, params, starts)
        jax.block_until_ready(track.eigenvalues)
        dt = time.perf_counter() - t0
        print(f"{label}: {dt:.1f} s")
    print(f"branches: {track.num_branches}, converged everywhere: {bool(track.converged.all())}")
    for bif in track.bifurcations:
        print(
            f"  {bif.kind} at checkpoint {float(bif.parameter):.4f} "
            f"(λ = {np.asarray(bif.eigenvalues)[0]:.3g}, {bif.criticality})"
        )


if __name__ == "__main__":
    main()
