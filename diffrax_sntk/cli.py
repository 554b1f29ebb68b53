"""The `diffrax-sntk` command."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import diffrax_sntk as ds

    from ._misc import participation_ratio

    t_start = time.perf_counter()
    key_model, key_y0 = jr.split(jr.PRNGKey(args.seed))
    model = ds.CTRNN(args.hidden, key=key_model, gain=args.gain)
    ts = jnp.linspace(0.5, 10.0, args.times)
    problem = ds.TrajectoryProblem(ts, jr.normal(key_y0, (args.batch, args.hidden)))
    theta = ds.sntk_operator(model, problem)
    dim = args.batch * args.times * args.hidden
    mat = np.asarray(eqx.filter_jit(lambda op: op.as_matrix())(theta))
    eig = np.sort(np.linalg.eigvalsh(mat))[::-1]
    eig = np.clip(eig, 0.0, None)
    pr = float(participation_ratio(eig))
    print(
        f"sNTK of a CTRNN (N={args.hidden}, gain={args.gain}), {args.batch} trials x "
        f"{args.times} times: Θ is {dim} x {dim}"
    )
    print(f"trace = {eig.sum():.6g}, participation ratio = {pr:.3f}")
    print("top eigenvalues:")
    for i, lam in enumerate(eig[: args.top]):
        print(f"  λ_{i + 1} = {lam:.6e}   ({lam / eig.sum():6.2%} of the trace)")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from .experiments import Interrupted, StudentTeacherConfig, run_student_teacher

    preset = "quick" if args.quick else "full" if args.full else "default"
    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = StudentTeacherConfig.preset(preset, **overrides)
    print(f"student-teacher experiment ({preset}): writing to {args.out}")
    try:
        report = run_student_teacher(
            cfg, args.out, resume=args.resume, progress=not args.no_progress,
            stop_after=args.stop_after,
        )
    except Interrupted as e:
        print(f"interrupted: {e}; rerun with --resume to continue")
        return 3
    with open(f"{args.out}/summary.md") as f:
        print(f.read())
    print(f"done in {report['wall_time_seconds']:.1f} s")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _sweep(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import dataclasses

    from .experiments import StudentTeacherConfig, run_sweep

    task_fields = {}
    if args.task == "hopf":
        task_fields["hopf_frequency"] = args.hopf_frequency or "fixed"
    elif args.hopf_frequency is not None:
        print("--hopf-frequency applies to --task hopf only", file=sys.stderr)
        return 2
    if args.tracker is not None:
        if args.tracker == "initial" and args.task != "pitchfork":
            print("--tracker initial applies to --task pitchfork only (the fold and Hopf tasks "
                  "always track births)", file=sys.stderr)
            return 2
        if args.tracker == "births" and args.task == "pitchfork":
            task_fields["tracker"] = "births"  # else the task's default: run ids stay as before
    base = StudentTeacherConfig.preset("quick" if args.quick else "default", task=args.task,
                                       **task_fields)
    overrides = {}
    if args.learning_rates is not None:
        overrides["learning_rates"] = args.learning_rates
    for name in ("hidden", "teacher_gain", "trainable", "steps", "eval_every", "trials",
                 "times", "t_end"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    configs = [dataclasses.replace(base, student=s, **overrides)
               for s in args.student.split(",")]
    seeds = list(range(args.seeds))
    print(f"sweep: {len(configs)} configuration(s) x {len(seeds)} seeds x "
          f"{len(configs[0].learning_rates)} learning rates, writing to {args.out}")
    t = time.perf_counter()
    summary = run_sweep(args.out, configs, seeds, resume=args.resume,
                        progress=not args.no_progress, figures=not args.no_figures,
                        log=lambda line: print(line, flush=True))
    with open(f"{args.out}/summary.md") as f:
        print(f.read())
    print(f"{sum(len(g['seeds']) for g in summary['groups'])} runs in {args.out}/runs.jsonl; "
          f"done in {time.perf_counter() - t:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="diffrax-sntk",
        description="State-space NTK analysis of continuous-time models (diffrax).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print the sNTK spectrum of a small CTRNN")
    demo.add_argument("--hidden", type=int, default=8)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--times", type=int, default=10)
    demo.add_argument("--gain", type=float, default=0.9)
    demo.add_argument("--top", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    rep = sub.add_parser(
        "reproduce", help="run the paper's student-teacher experiment and write a report"
    )
    rep.add_argument("--out", default="sntk_out", help="output folder (default: sntk_out)")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (a quick check)")
    size.add_argument("--full", action="store_true", help="paper-scale sizes (long)")
    rep.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    rep.add_argument("--steps", type=int, default=None, help="override the number of steps")
    rep.add_argument("--seed", type=int, default=None)
    rep.add_argument("--no-progress", action="store_true")
    rep.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    rep.set_defaults(func=_reproduce)
    sw = sub.add_parser(
        "sweep", help="the pre-registered multi-seed protocol (runs.jsonl, summary.json)"
    )
    sw.add_argument("--out", required=True, help="output folder")
    sw.add_argument("--quick", action="store_true", help="small sizes (the quick preset)")
    sw.add_argument("--seeds", type=int, default=5, help="seeds 0..K-1 (default 5)")
    sw.add_argument("--learning-rates", type=_floats, default=None,
                    help="comma-separated grid (default 0.05,0.1,0.2,0.3,0.5)")
    sw.add_argument("--hidden", type=int, default=None, help="state dimension N")
    sw.add_argument("--student", default="shared",
                    help="shared | independent (or both, comma-separated)")
    sw.add_argument("--teacher-gain", type=float, default=None)
    sw.add_argument("--trainable", choices=["W", "W,b,U"], default=None)
    sw.add_argument("--task", choices=["pitchfork", "fold", "hopf"], default="pitchfork",
                    help="pitchfork (default), fold (a saddle-node birth of a second attractor) "
                         "or hopf (a limit cycle born in a supercritical Hopf)")
    sw.add_argument("--hopf-frequency", choices=["fixed", "trained"], default=None,
                    help="task hopf: the student's frequency is the teacher's and fixed "
                         "(default), or starts elsewhere and is trained")
    sw.add_argument("--tracker", choices=["initial", "births"], default=None,
                    help="task pitchfork: follow the initial equilibrium only (default), or also "
                         "births and deaths of other equilibria (the pre-registered "
                         "births-aware variant; analysis only, reuses the training cache)")
    sw.add_argument("--steps", type=int, default=None)
    sw.add_argument("--eval-every", type=int, default=None)
    sw.add_argument("--trials", type=int, default=None)
    sw.add_argument("--times", type=int, default=None)
    sw.add_argument("--t-end", type=float, default=None)
    sw.add_argument("--resume", action="store_true", help="skip runs already in runs.jsonl")
    sw.add_argument("--no-progress", action="store_true")
    sw.add_argument("--no-figures", action="store_true")
    sw.set_defaults(func=_sweep)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
