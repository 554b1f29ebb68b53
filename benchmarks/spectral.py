"""Benchmark: top eigenpairs of CTRNN sNTK operators, and the dense-vs-matrix-free crossover.

    python benchmarks/spectral.py            # full: 51,200-dim (top-5) and 1,048,576-dim (top-10)
    python benchmarks/spectral.py --quick    # tiny sizes, a smoke run
    python benchmarks/spectral.py --arpack   # against ARPACK (scipy eigsh) on one jitted Θv
    python benchmarks/spectral.py --arpack --cache DIR   # with JAX's persistent compile cache

`--arpack` (issue 19): the 51,200-dimensional Θ (N = 128, B = 8, T = 50, float64), top-10,
tol 1e-8, on the default CTRNN and on a clustered one (gain 0.05: nearly linear dynamics, whose
Θ has clusters of close eigenvalues). ARPACK (`scipy.sparse.linalg.eigsh`, what KPFlow uses)
calls the same jitted Θv from the host, one vector at a time. Printed side by side: first call
(compile included; the operator build is shared and printed once), the compiled time, matvecs,
the share of the compiled time outside matvecs, max residual ‖Θu − λu‖/λ (recomputed for both)
and the largest eigenvalue difference.

Every wall time includes compilation (each case is a fresh jit). The operator is built outside
`jit`, so by default it is the replay operator (recorded steps, stored linearisation; see
docs/operators.md); its build time (one forward solve, one linearised replay, and their
compilation) is printed separately and included in the total. `--method solve` benchmarks the
solve-per-matvec path instead. The problem uses the package's default tolerances (rtol 1e-8,
atol 1e-10). The baseline is matfree's single-vector Lanczos (`eigh_partial(tridiag_sym(depth))`)
on the same operator; its residuals are computed afterwards with one extra block matvec that is
not timed.
"""

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from _timing import CompileClock  # benchmarks/_timing.py
from matfree import decomp, eig

import diffrax_sntk as ds

jax.config.update("jax_enable_x64", True)


METHOD = "auto"
BLOCK = None
CLOCK = CompileClock()  # JAX's trace/lower/compile events, for the per-phase split


def make_theta(n_state, batch, time_points, seed=0):
    """The operator and its build time (seconds, including compilation)."""
    model = ds.CTRNN(n_state, key=jr.PRNGKey(seed))
    y0 = jr.normal(jr.PRNGKey(seed + 1), (batch, n_state))
    problem = ds.TrajectoryProblem(jnp.linspace(0.1, 5.0, time_points), y0)
    before = CLOCK.snapshot()
    t0 = time.perf_counter()
    theta = jax.block_until_ready(ds.sntk_operator(model, problem, method=METHOD))
    wall = time.perf_counter() - t0
    return theta, wall, CLOCK.since(before, wall)


def residuals(theta, vals, vecs):
    Av = eqx.filter_jit(lambda op, v: jax.vmap(op.mv)(v))(theta, vecs)
    r = jax.vmap(lambda a, v, lam: jnp.linalg.norm(a - lam * v) / lam)(Av, vecs, vals)
    return r


def run_ours(theta, k, tol):
    before = CLOCK.snapshot()
    t0 = time.perf_counter()
    res = ds.top_eigenpairs(theta, k, key=jr.PRNGKey(42), tol=tol, block_size=BLOCK)
    jax.block_until_ready(res)
    wall = time.perf_counter() - t0
    parts = CLOCK.since(before, wall)
    check = residuals(theta, res.values, res.vectors)
    return wall, parts, res, check


def run_baseline(theta, k, depth):
    fn = eqx.filter_jit(
        lambda op, v0: eig.eigh_partial(decomp.tridiag_sym(depth))(op.mv, v0)
    )
    v0 = jr.normal(jr.PRNGKey(0), theta.in_structure().shape)
    t0 = time.perf_counter()
    vals, vecs = fn(theta, v0)
    jax.block_until_ready(vals)
    wall = time.perf_counter() - t0
    vals, vecs = vals[::-1][:k], vecs[::-1][:k]
    return wall, vals, residuals(theta, vals, vecs)


def case(name, n_state, batch, time_points, k, depth, tol, baseline=True):
    theta, build, build_parts = make_theta(n_state, batch, time_points)
    n = theta.in_size()
    print(f"\n== {name}: CTRNN N={n_state}, B={batch}, T={time_points}: Θ dimension {n:,}, top-{k}")
    wall, parts, res, check = run_ours(theta, k, tol)
    print(
        f"  ours (Lanczos, block_size={BLOCK or 1}, method={METHOD}): total {build + wall:7.2f} s "
        f"incl. compile (operator build {build:.2f} s + eigensolve {wall:.2f} s), "
        f"{int(res.num_matvecs)} matvecs, "
        f"{int(res.num_restarts)} cycles, max residual {float(jnp.max(check)):.1e} "
        f"(reported {float(jnp.max(res.residuals)):.1e}), converged {bool(jnp.all(res.converged))}"
    )
    print(f"  operator build {build:.2f} s: {build_parts}")
    print(f"  eigensolve {wall:.2f} s: {parts}")
    print(f"  eigenvalues: {jnp.asarray(res.values)}")
    # The same eigensolve again, compiled: separates compilation from the run.
    t0 = time.perf_counter()
    jax.block_until_ready(
        ds.top_eigenpairs(theta, k, key=jr.PRNGKey(42), tol=tol, block_size=BLOCK)
    )
    again = time.perf_counter() - t0
    print(f"  eigensolve again (already compiled): {again:.2f} s")
    # One compiled matvec on its own: the floor that the matvec count multiplies.
    mv = eqx.filter_jit(lambda op, v: op.mv(v))
    v = jr.normal(jr.PRNGKey(1), theta.in_structure().shape)
    jax.block_until_ready(mv(theta, v))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(mv(theta, v))
        times.append(time.perf_counter() - t0)
    one = sorted(times)[1]
    print(
        f"  one Θv (compiled, median of 3): {one:.3f} s; eigensolve per matvec "
        f"{again / int(res.num_matvecs):.3f} s (matvecs {one * int(res.num_matvecs) / again:.0%} "
        f"of the compiled eigensolve)"
    )
    if not baseline:
        return wall, res
    bwall, bvals, bcheck = run_baseline(theta, k, depth)
    print(
        f"  baseline (matfree Lanczos depth {depth}): {bwall:7.2f} s incl. compile, {depth} "
        f"matvecs, max residual {float(jnp.max(bcheck)):.1e}, "
        f"max |Δλ|/λ vs ours {float(jnp.max(jnp.abs(bvals - res.values) / res.values)):.1e}"
    )
    return wall, res


def crossover(sizes, batch, time_points, k, tol):
    """Time dense (materialise + eigh) vs matrix-free top-k for growing state size N."""
    print(f"\n== dense vs matrix-free crossover (B={batch}, T={time_points}, top-{k})")
    rows = []
    for n_state in sizes:
        theta, build, _ = make_theta(n_state, batch, time_points)
        n = theta.in_size()
        chunk = math.gcd(n, 64)

        @eqx.filter_jit
        def dense_eigh(op, n=n, chunk=chunk):
            eye = jnp.eye(n).reshape((n // chunk, chunk, n))
            cols = jax.lax.map(
                lambda E: jax.vmap(lambda e: op.mv(e.reshape(op.in_structure().shape)))(E), eye
            )
            M = cols.reshape(n, n)
            return jnp.linalg.eigvalsh(0.5 * (M + M.T))[::-1][:k]

        t0 = time.perf_counter()
        jax.block_until_ready(dense_eigh(theta))
        t_dense = time.perf_counter() - t0 + build
        t0 = time.perf_counter()
        jax.block_until_ready(
            ds.top_eigenpairs(theta, k, key=jr.PRNGKey(0), tol=tol, block_size=BLOCK)
        )
        t_free = time.perf_counter() - t0 + build
        rows.append((n, t_dense, t_free))
        print(f"  dim {n:6d}: dense {t_dense:7.2f} s, matrix-free {t_free:7.2f} s (incl. compile)")
    cross = next((n for n, d, f in rows if d > f), None)
    if cross is None:
        print("  dense was faster at every size tried")
    else:
        print(f"  matrix-free wins from dimension ~{cross} (first size tried where it was faster)")


def run_arpack(theta, k, tol, v0):
    """ARPACK through scipy on the jitted Θv: (first call s, compiled s, matvecs, vals, vecs).

    The first call compiles Θv (a fresh jit); the second reuses it."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    shape, n = theta.in_structure().shape, theta.in_size()
    mv = eqx.filter_jit(lambda op, v: op.mv(v))
    count = [0]

    def matvec(x):
        count[0] += 1
        return np.asarray(mv(theta, jnp.asarray(x.reshape(shape)))).reshape(-1)

    A = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    times = []
    for _ in range(2):
        count[0] = 0
        t0 = time.perf_counter()
        vals, vecs = eigsh(A, k=k, which="LA", tol=tol, v0=np.asarray(v0))
        times.append(time.perf_counter() - t0)
    order = np.argsort(vals)[::-1]
    return times[0], times[1], count[0], vals[order], vecs[:, order].T


def arpack_case(name, gain, k, tol, blocks, n_state=128, batch=8, time_points=50):
    model = ds.CTRNN(n_state, key=jr.PRNGKey(0), gain=gain)
    y0 = jr.normal(jr.PRNGKey(1), (batch, n_state))
    problem = ds.TrajectoryProblem(jnp.linspace(0.1, 5.0, time_points), y0)
    before = CLOCK.snapshot()
    t0 = time.perf_counter()
    theta = jax.block_until_ready(ds.sntk_operator(model, problem, method=METHOD))
    build = time.perf_counter() - t0
    n = theta.in_size()
    print(f"\n== {name}: CTRNN N={n_state} gain {gain}, B={batch}, T={time_points}: Θ dimension "
          f"{n:,}, top-{k}, tol {tol:g}")
    print(f"  operator build (shared) {build:.2f} s: {CLOCK.since(before, build)}")
    v0 = jr.normal(jr.PRNGKey(3), (n,))
    afirst, again, amv, avals, avecs = run_arpack(theta, k, tol, v0)
    shape = theta.in_structure().shape
    ares = residuals(theta, jnp.asarray(avals), jnp.asarray(avecs).reshape((k,) + shape))
    mv = eqx.filter_jit(lambda op, v: op.mv(v))
    x = v0.reshape(theta.in_structure().shape)
    one = sorted(_time(lambda: mv(theta, x)) for _ in range(3))[1]
    rows = [("ARPACK eigsh", afirst, again, amv, float(jnp.max(ares)), 0.0, one * amv / again)]
    for b in blocks:
        first_t = _time(lambda b=b: ds.top_eigenpairs(theta, k, key=jr.PRNGKey(42), tol=tol,
                                                      block_size=b))
        before = CLOCK.snapshot()
        t0 = time.perf_counter()
        res = jax.block_until_ready(
            ds.top_eigenpairs(theta, k, key=jr.PRNGKey(42), tol=tol, block_size=b)
        )
        compiled = time.perf_counter() - t0
        check = residuals(theta, res.values, res.vectors)
        dlam = float(jnp.max(jnp.abs(res.values - avals) / avals[0]))
        # Per-vector matvec time in a block, for the non-matvec share.
        if b > 1:
            X = jnp.stack([x] * b)
            bmv = eqx.filter_jit(lambda op, v: jax.vmap(op.mv)(v))
            jax.block_until_ready(bmv(theta, X))
            per = sorted(_time(lambda f=bmv, X=X: f(theta, X)) for _ in range(3))[1] / b
        else:
            per = one
        mvs = int(res.num_matvecs)
        rows.append((f"ours block {b}", first_t, compiled, mvs, float(jnp.max(check)), dlam,
                     per * mvs / compiled))
    print(f"  one Θv (compiled): {one:.3f} s")
    print(f"  {'solver':14s} {'first call s':>12s} {'/ARPACK':>8s} {'compiled s':>10s} "
          f"{'/ARPACK':>8s} {'matvecs':>8s} {'non-matvec':>10s} {'max resid':>9s} "
          f"{'max dλ/λ1':>9s}")
    for label, f, c, m, r, d, share in rows:
        print(f"  {label:14s} {f:12.2f} {f / rows[0][1]:8.2f} {c:10.2f} {c / rows[0][2]:8.2f} "
              f"{m:8d} {max(0.0, 1 - share):10.0%} {r:9.1e} {d:9.1e}")


def _time(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 10^6-dim case")
    parser.add_argument("--only-large", action="store_true", help="only the 10^6-dim case")
    parser.add_argument("--method", default="auto", choices=["auto", "replay", "solve"],
                        help="matvec method of the sNTK operator (default auto = replay here)")
    parser.add_argument("--tol", type=float, default=1e-7,
                        help="eigensolver tolerance (default 1e-7; the target is residual < 1e-6)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="block size of top_eigenpairs (default: its default, 1)")
    parser.add_argument("--arpack", action="store_true",
                        help="against ARPACK on the 51,200-dim default and clustered problems")
    parser.add_argument("--blocks", default="1,4",
                        help="block sizes of ours for --arpack (default 1,4)")
    parser.add_argument("--cache", default=None,
                        help="directory of JAX's persistent compilation cache (opt-in)")
    args = parser.parse_args()
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    global METHOD, BLOCK
    METHOD, BLOCK = args.method, args.block_size
    print(f"jax {jax.__version__}, devices {jax.devices()}, x64 on")
    tol = args.tol
    if args.arpack:
        blocks = [int(b) for b in args.blocks.split(",")]
        if args.quick:
            arpack_case("quick default", 0.9, 3, 1e-8, blocks, 8, 2, 10)
            return
        arpack_case("default", 1.0, 10, 1e-8, blocks)
        arpack_case("clustered", 0.05, 10, 1e-8, blocks)
        return
    if args.quick:
        case("quick-1", 8, 4, 10, 5, 20, tol)
        case("quick-2", 16, 4, 16, 10, 30, tol)
        crossover([8], 4, 10, 5, tol)
        return
    if not args.only_large:
        case("51,200-dim", 128, 8, 50, 5, 20, tol)
    if not args.skip_large:
        case("1,048,576-dim", 256, 32, 128, 10, 30, tol, baseline=False)
    if not args.only_large:
        crossover([2, 4, 8, 16], 8, 50, 5, tol)


if __name__ == "__main__":
    main()
