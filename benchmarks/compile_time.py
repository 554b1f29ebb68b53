"""Cold-start time of a top-10 eigensolve on the 51,200-dimensional sNTK (issue 19, item 3).

Each of `--processes` fresh Python processes (so nothing is compiled or cached in memory; the
persistent compilation cache is off unless `--cache DIR`): build `ds.sntk_operator` of a CTRNN
(N = 128, B = 8, T = 50, the default `TrajectoryProblem`, float64), then the first call of
`ds.top_eigenpairs(theta, 10, tol=1e-8)`. Printed per process and as the median: the build
(recording solve, linearised replay and their compilation), the eigensolve's first call
(compile and run), their total, JAX's trace/lower/compile split of that total, the second
(compiled) eigensolve, and the largest residual ‖Θu − λu‖/λ. The goal of the issue: total
< 10 s with every residual < 1e-6.

    python benchmarks/compile_time.py [--processes 5] [--cache DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def worker(cache):
    t_import = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    from _timing import CompileClock

    import diffrax_sntk as ds

    clock = CompileClock()
    imported = time.perf_counter() - t_import
    before = clock.snapshot()
    t0 = time.perf_counter()
    model = ds.CTRNN(128, key=jr.PRNGKey(0))
    problem = ds.TrajectoryProblem(jnp.linspace(0.1, 5.0, 50), jr.normal(jr.PRNGKey(1), (8, 128)))
    theta = jax.block_until_ready(ds.sntk_operator(model, problem))
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = jax.block_until_ready(ds.top_eigenpairs(theta, 10, key=jr.PRNGKey(42), tol=1e-8))
    first = time.perf_counter() - t1
    total = time.perf_counter() - t0
    parts = clock.since(before, total)
    t2 = time.perf_counter()
    jax.block_until_ready(ds.top_eigenpairs(theta, 10, key=jr.PRNGKey(42), tol=1e-8))
    compiled = time.perf_counter() - t2
    Av = eqx.filter_jit(lambda op, v: jax.vmap(op.mv)(v))(theta, res.vectors)
    resid = jax.vmap(lambda a, v, lam: jnp.linalg.norm(a - lam * v) / lam)(
        Av, res.vectors, res.values)
    return dict(import_s=imported, build_s=build, first_eig_s=first, total_s=total,
                compiled_eig_s=compiled, matvecs=int(res.num_matvecs),
                max_residual=float(jnp.max(resid)), split=str(parts))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--cache", default=None, help="JAX persistent compilation cache dir")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.cache)))
        return
    rows = []
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
    if args.cache:
        cmd += ["--cache", args.cache]
    print(f"load average before {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    for i in range(args.processes):
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(cmd[1]))
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"process {i}: build {r['build_s']:.2f} s + first eigensolve {r['first_eig_s']:.2f} s"
              f" = {r['total_s']:.2f} s (compiled eigensolve {r['compiled_eig_s']:.2f} s, "
              f"{r['matvecs']} matvecs, max residual {r['max_residual']:.1e}); {r['split']}",
              flush=True)
    med = {k: float(np.median([r[k] for r in rows]))
           for k in ("build_s", "first_eig_s", "total_s", "compiled_eig_s")}
    print(f"median over {len(rows)} processes: build {med['build_s']:.2f} s, first eigensolve "
          f"{med['first_eig_s']:.2f} s, total {med['total_s']:.2f} s (goal < 10 s), compiled "
          f"eigensolve {med['compiled_eig_s']:.2f} s; max residual "
          f"{max(r['max_residual'] for r in rows):.1e} (goal < 1e-6)")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
