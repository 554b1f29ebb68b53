"""Cost of one sNTK matvec Θv against one forward solve, with memory and compile time (issue 8).

One command prints the table:

    python benchmarks/matvec.py            # CTRNN N in {64, 256}, B = 8, T = 50 + memory row
    python benchmarks/matvec.py --quick    # tiny sizes, for a smoke run

Per row (CTRNN, Tsit5, float64, rtol 1e-6 / atol 1e-8 as in `benchmarks/operators.py`):
median wall time over `--repeats` runs (after compilation) of the forward solve and of Θv; the
ratio Θv / forward; the per-vector ratio of a block Θ·V of `--block` vectors (vmapped) to the
forward solve; the first-call (compile + one run) time of Θv; and the peak resident memory of
the process (`resource.getrusage`). Every row runs in a fresh subprocess, so peak RSS belongs
to that row alone (it includes the ~0.3-0.5 GB of the JAX runtime itself). The memory row
(N = 256, B = 32, T = 200) runs Θv only: no block, so its peak is Θv's.

Targets of issue 8: Θv <= 3x forward, block <= 1.5x forward per vector, Θv memory < 4 GB at
N = 256, B = 32, T = 200, Θv compile < 30 s at N = 256 (2 cores).
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


def worker(n: int, batch: int, times: int, block: int, repeats: int) -> dict:
    """One row, in this process. `block == 0`: Θv only (the memory row)."""
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
    thv = eqx.filter_jit(lambda m, x: ds.sntk_operator(m, problem).mv(x))

    row = dict(n=n, batch=batch, times=times, block=block)
    row["compile_fwd_s"] = first_call(fwd, model)
    row["compile_thv_s"] = first_call(thv, model, v)
    row["fwd_ms"] = 1e3 * median_time(fwd, model, repeats=repeats)
    row["thv_ms"] = 1e3 * median_time(thv, model, v, repeats=repeats)
    row["rss_thv_mb"] = _peak_rss_mb()
    if block > 0:
        vs = jr.normal(kv, (block, batch, times, n))
        thV = eqx.filter_jit(lambda m, x: jax.vmap(ds.sntk_operator(m, problem).mv)(x))
        row["compile_block_s"] = first_call(thV, model, vs)
        row["block_ms"] = 1e3 * median_time(thV, model, vs, repeats=repeats)
    row["rss_mb"] = _peak_rss_mb()
    row["backend"] = jax.devices()[0].platform
    return row


def _run_row(n, batch, times, block, repeats) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker",
           f"{n},{batch},{times},{block},{repeats}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"row N={n} B={batch} T={times} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per median (default 5)")
    parser.add_argument("--block", type=int, default=16, help="vectors in the block (default 16)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        n, b, t, blk, rep = (int(x) for x in args.worker.split(","))
        print(json.dumps(worker(n, b, t, blk, rep)))
        return
    if args.repeats < 1 or args.block < 1:
        parser.error("`--repeats` and `--block` must be positive")
    if args.quick:
        rows, memory = [(8, 2, 10)], (16, 4, 20)
    else:
        rows, memory = [(64, 8, 50), (256, 8, 50)], (256, 32, 200)

    header = (f"{'N':>4} {'B':>3} {'T':>4} {'fwd ms':>9} {'Θv ms':>9} {'Θv/fwd':>7} "
              f"{'block/vec/fwd':>14} {'compile Θv s':>13} {'peak RSS MB':>12}")
    results = []
    for n, b, t in rows:
        results.append(_run_row(n, b, t, args.block, args.repeats))
    mem = _run_row(*memory, 0, args.repeats)
    print(f"{results[0]['backend']} backend, Tsit5, float64, medians of {args.repeats} runs, "
          f"block of {args.block} vectors (vmapped); each row in a fresh process")
    print(header)
    for r in results:
        ratio = r["thv_ms"] / r["fwd_ms"]
        per_vec = r["block_ms"] / args.block / r["fwd_ms"]
        print(f"{r['n']:>4} {r['batch']:>3} {r['times']:>4} {r['fwd_ms']:>9.2f} "
              f"{r['thv_ms']:>9.2f} {ratio:>7.2f} {per_vec:>14.2f} {r['compile_thv_s']:>13.1f} "
              f"{r['rss_mb']:>12.0f}")
    r = mem
    print(f"{r['n']:>4} {r['batch']:>3} {r['times']:>4} {r['fwd_ms']:>9.2f} "
          f"{r['thv_ms']:>9.2f} {r['thv_ms'] / r['fwd_ms']:>7.2f} {'(Θv only)':>14} "
          f"{r['compile_thv_s']:>13.1f} {r['rss_mb']:>12.0f}")
    print("targets: Θv/fwd <= 3, block/vec/fwd <= 1.5, memory row < 4096 MB, "
          "compile Θv < 30 s at N = 256")


if __name__ == "__main__":
    main()
