"""The pre-registered births test (`docs/student_teacher_protocol.md`, "Pre-registered ...
session 6"): H1 (PR minima at fold events) and H2 (C1–C4 rates) from the `runs.jsonl` of a
`diffrax-sntk sweep --tracker births` directory, for the runs of the given seeds.

    python docs/results/births_protocol/h1.py SWEEP_DIR FIRST_SEED LAST_SEED [--verdict]

`--verdict` prints the pre-registered verdicts (H1: N = 10 only; H2: per criterion).
"""

import json
import sys

import numpy as np

from diffrax_sntk.experiments._criteria import criterion_stats

CRITERIA = ("C1_localisation", "C2_depth", "C3_channel", "C4_normal_form")


def _run_stats(r):
    c = r["config"]
    pr = np.asarray([np.nan if x is None else x for x in r["curves"]["pr"]], float)
    steps = np.asarray(r["curves"]["eval_steps"], float)
    events = np.asarray([b["step"] for b in r["bifurcations"]], float)
    window = float(c.get("eval_every", 1))
    k = float(steps[int(np.nanargmin(pr))])
    near = lambda x: bool(events.size and np.min(np.abs(events - x)) <= window)
    return dict(seed=c["seed"], lr=c["learning_rate"], hidden=c["hidden"], k=k,
                pr_min=float(np.nanmin(pr)), events=events, window=window,
                hit=near(k), uniform=float(np.mean([near(x) for x in steps])),
                dist=float(np.min(np.abs(events - k))) if events.size else float("inf"),
                kinds=[b.get("event", "branch") for b in r["bifurcations"]])


def h1(rows):
    hits = np.asarray([r["hit"] for r in rows])
    p = np.zeros(len(rows) + 1)
    p[0] = 1.0
    for r in rows:
        p = np.convolve(p[:-1], [1 - r["uniform"], r["uniform"]])
    p_value = float(p[int(hits.sum()):].sum())
    mism = [bool(o["events"].size and np.min(np.abs(o["events"] - r["k"])) <= r["window"])
            for r in rows for o in rows
            if (o["lr"], o["hidden"]) == (r["lr"], r["hidden"]) and o["seed"] != r["seed"]]
    return int(hits.sum()), len(rows), sum(r["uniform"] for r in rows), p_value, (
        float(np.mean(mism)) if mism else float("nan")), len(mism)


def main(out, first, last, verdict):
    rows, recs = [], []
    for line in open(f"{out}/runs.jsonl"):
        r = json.loads(line)
        c = r["config"]
        if c.get("tracker") != "births" or not first <= c["seed"] <= last:
            continue
        if r.get("error"):
            print(f"seed {c['seed']} lr {c['learning_rate']}: error {r['error']}")
            recs.append(r)
            continue
        recs.append(r)
        s = _run_stats(r)
        rows.append(s)
        listed = ", ".join(f"{x} {e:.2f}" for x, e in zip(s["kinds"], s["events"], strict=True))
        print(f"seed {s['seed']} lr {s['lr']}: min PR {s['pr_min']:.2f} at step {s['k']:g}; "
              f"nearest event {s['dist']:.2f} steps away; {len(s['events'])} events "
              f"({listed}); "
              f"uniform chance {s['uniform']:.2f}; hit {s['hit']}")
    hits, n, expected, p_value, mism, pairs = h1(rows)
    print(f"\nH1: PR minimum within ±1 evaluation of an event in {hits}/{n} runs "
          f"(rate {hits / max(n, 1):.3f}); uniform reference: expected {expected:.1f}, "
          f"P(>= {hits}) = {p_value:.2g}; mismatched reference: {mism:.3f} over {pairs} pairs")
    if verdict:
        ok = p_value < 0.01 and hits / max(n, 1) >= 2 * mism
        print(f"H1 verdict (P < 0.01 and rate >= 2 x mismatched): "
              f"{'confirmed' if ok else 'not confirmed'}")
    print("\nH2 (runs without a crossing fail):")
    for name in CRITERIA:
        st = criterion_stats([r["criteria"][name]["pass"] for r in recs])
        lo, hi = st["wilson_low"], st["wilson_high"]
        word = ("supported" if lo > 0.5 else "not supported" if hi < 0.5 else "inconclusive")
        print(f"  {name}: {st['passes']}/{st['runs']} = {st['rate']:.2f} "
              f"[{lo:.2f}, {hi:.2f}]" + (f", not assessable {st['not_assessable']}"
                                         if st.get("not_assessable") else "")
              + (f" -> {word}" if verdict else ""))
    crossing = [r["bifurcations"][0] for r in recs if r["bifurcations"]]
    firsts: dict = {}
    for b in crossing:
        key = f"{b.get('event')} {b['kind']}"
        firsts[key] = firsts.get(key, 0) + 1
    print(f"  runs with a crossing: {len(crossing)}/{len(recs)}; first events: {firsts}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "--verdict" in sys.argv)
