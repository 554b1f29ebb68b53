"""Cost of one sNTK matvec Θv against one forward solve, with memory and compile time (issue 8).

One command prints the table:

    python benchmarks/matvec.py            # CTRNN N in {64, 256}, B = 8, T = 50 + memory rows
    python benchmarks/matvec.py --quick    # tiny sizes, for a smoke run

Each size runs both matvec methods of `sntk_operator`: `replay` (the default outside `jit`:
the accepted steps are recorded once and the linearisation stored, so a matvec is two linear
passes) and `solve` (a fresh adjoint and tangent `diffeqsolve` per matvec, the foundation's
reference path). Per row (CTRNN, Tsit5, float64, rtol 1e-6 / atol 1e-8 as in
`benchmarks/operators.py`): median wall time over `--repeats` runs (after compilation) of the
forward solve (`simulate`, which includes the probe tangent of the default controller) and of
Θv; their ratio; the per-vector ratio of a block Θ·V of `--block` vectors (vmapped) to the
forward solve; for `replay`, the time to rebuild the operator at a new θ; the first-call
(compile + one run) time; the peak resident memory of the process (`resource.getrusage`; every
row runs in a fresh subprocess, so it belongs to that row alone and includes the ~0.3-0.5 GB of
the JAX runtime); and the relative difference of the replay Θv from the solve Θv. The memory
rows (N = 256, B = 32, T = 200) run Θv only: no block, so their peak is Θv's.

Targets of issue 8: Θv <= 3x forward, block <= 1.5x forward per vector, Θv memory < 4 GB at
N = 256, B = 32, T = 200, Θv compile < 30 s at N = 256 (2 cores), fast path equal to the
reference to 1e-8.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from _timing import first_call, median_time  # noqa: E402  (benchmarks/_timing.py)


def _peak_rss_mb() -> float:
    # Linux reports kilobytes (macOS bytes).
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def worker(n: int, batch: int, times: int, block: int, repeats: int, method: str) -> dict:
    """One row, in this process. `block == 0`: Θv only (the memory rows)."""
    import time

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import diffrax_sntk as ds

    kmodel, ky0, kv = jr.split(jr.PRNGKey(0), 3)
    model = ds.CTRNN(n, key=kmodel, gain=0.9)
    ts = jnp.linspace(0.2, 10.0, times)
    problem = ds.TrajectoryProblem(
        ts, jr.normal(ky0, (batch, n)), solver=dfx.Tsit5(), rtol=1e-6, atol=1e-8
    )
    v = jr.normal(kv, (batch, times, n))
    fwd = eqx.filter_jit(lambda m: ds.simulate(m, problem))
    row = dict(n=n, batch=batch, times=times, block=block, method=method)
    row["compile_fwd_s"] = first_call(fwd, model)
    row["fwd_ms"] = 1e3 * median_time(fwd, model, repeats=repeats)

    if method == "replay":
        # Built once per linearisation point (outside jit): record the steps, store the
        # linearisation. Then matvecs are linear passes.
        def build():
            return jax.block_until_ready(ds.sntk_operator(model, problem, method="replay"))

        t = time.perf_counter()
        theta = build()
        row["compile_build_s"] = time.perf_counter() - t
        row["build_ms"] = 1e3 * median_time(build, repeats=repeats)
        thv = eqx.filter_jit(lambda op, x: op.mv(x))
        args = (theta,)
    else:
        # The solve path: every matvec is a fresh adjoint and tangent diffeqsolve.
        theta = None
        thv = eqx.filter_jit(lambda m, x: ds.sntk_operator(m, problem, method="solve").mv(x))
        args = (model,)
    row["compile_thv_s"] = first_call(thv, *args, v)
    row["thv_ms"] = 1e3 * median_time(thv, *args, v, repeats=repeats)
    row["rss_thv_mb"] = _peak_rss_mb()
    if method == "replay" and block > 0:
        # Same vector through the reference (solve) path: accuracy of the fast path.
        ref = eqx.filter_jit(lambda m, x: ds.sntk_operator(m, problem, method="solve").mv(x))
        a, b = thv(*args, v), ref(model, v)
        row["rel_diff"] = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    if block > 0:
        vs = jr.normal(kv, (block, batch, times, n))
        thV = eqx.filter_jit(lambda *a: jax.vmap(thv, in_axes=(None,) * len(args) + (0,))(*a))
        row["compile_block_s"] = first_call(thV, *args, vs)
        row["block_ms"] = 1e3 * median_time(thV, *args, vs, repeats=repeats)
    row["rss_mb"] = _peak_rss_mb()
    row["backend"] = jax.devices()[0].platform
    return row


def _run_row(n, batch, times, block, repeats, method) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker",
           f"{n},{batch},{times},{block},{repeats},{method}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"row N={n} B={batch} T={times} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--repeats", type=int, default=9, help="runs per median (default 9)")
    parser.add_argument("--block", type=int, default=16, help="vectors in the block (default 16)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        *sizes, method = args.worker.split(",")
        n, b, t, blk, rep = (int(x) for x in sizes)
        print(json.dumps(worker(n, b, t, blk, rep, method)))
        return
    if args.repeats < 1 or args.block < 1:
        parser.error("`--repeats` and `--block` must be positive")
    if args.quick:
        rows, memory = [(8, 2, 10)], (16, 4, 20)
    else:
        rows, memory = [(64, 8, 50), (256, 8, 50)], (256, 32, 200)

    results = []
    for n, b, t in rows:
        for method in ("replay", "solve"):
            results.append(_run_row(n, b, t, args.block, args.repeats, method))
    for method in ("replay", "solve"):
        results.append(_run_row(*memory, 0, args.repeats, method))
    print(f"{results[0]['backend']} backend, CTRNN, Tsit5, float64, rtol 1e-6, medians of "
          f"{args.repeats} runs; block of {args.block} vectors (vmapped); each row in a fresh "
          "process; `replay` = default method (stored linearisation), `solve` = a diffeqsolve "
          "per matvec")
    print(f"{'N':>4} {'B':>3} {'T':>4} {'method':>7} {'fwd ms':>8} {'Θv ms':>8} {'Θv/fwd':>7} "
          f"{'block/vec/fwd':>13} {'build ms':>9} {'compile s':>10} {'peak RSS MB':>11} "
          f"{'vs solve':>9}")
    for r in results:
        per_vec = (f"{r['block_ms'] / args.block / r['fwd_ms']:.2f}" if "block_ms" in r
                   else "(Θv only)")
        build = f"{r['build_ms']:.1f}" if "build_ms" in r else "-"
        compile_s = r["compile_thv_s"] + r.get("compile_build_s", 0.0)
        diff = f"{r['rel_diff']:.1e}" if "rel_diff" in r else "-"
        print(f"{r['n']:>4} {r['batch']:>3} {r['times']:>4} {r['method']:>7} {r['fwd_ms']:>8.2f} "
              f"{r['thv_ms']:>8.2f} {r['thv_ms'] / r['fwd_ms']:>7.2f} {per_vec:>13} {build:>9} "
              f"{compile_s:>10.1f} {r['rss_mb']:>11.0f} {diff:>9}")
    print("compile s: first call of Θv (replay: plus the first build, which records the steps "
          "and stores the linearisation); build ms: a rebuild at a new θ, after compilation; "
          "vs solve: ‖Θv_replay − Θv_solve‖/‖Θv_solve‖")
    print("targets: Θv/fwd <= 3, block/vec/fwd <= 1.5, memory rows < 4096 MB, "
          "compile < 30 s at N = 256, fast path = reference to 1e-8")


if __name__ == "__main__":
    main()
