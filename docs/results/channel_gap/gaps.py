"""Exploratory (not a criterion, not pre-registered): is the collapse at a crossing isolated
onto a channel of the recorded rank? C2 asks s1/s2 >= 10 at the crossing, a rank-one gap. For a
channel of rank r the matching gap is s_r/s_{r+1}. The runs record the top eigenvalues of the
sNTK at every evaluation step (`curves.top`), not at the fractional crossing step, so the gaps
are read at the two evaluation steps that bracket the first crossing (floor and ceil).

    python docs/results/channel_gap/gaps.py docs/results/task_hopf_trained_n32/runs.jsonl ...

Prints one line per crossing run and, per file, the median and range of s1/s2 and of
s_r/s_{r+1} (r = the run's `channel_rank`), the smaller of the two bracketing steps."""
import json
import math
import sys

import numpy as np

for path in sys.argv[1:]:
    rows = []
    for line in open(path):
        r = json.loads(line)
        at = r.get("at_crossing") or {}
        if at.get("step") is None or r.get("channel_rank") is None:
            continue
        ev = np.asarray(r["curves"]["eval_steps"], dtype=float)
        top = np.asarray(r["curves"]["top"], dtype=float)
        lo, hi = np.searchsorted(ev, at["step"], side="right") - 1, np.searchsorted(ev, at["step"])
        k = int(r["channel_rank"])
        g1 = [top[i, 0] / top[i, 1] for i in (lo, hi)]
        gr = [top[i, k - 1] / top[i, k] for i in (lo, hi)]
        rows.append((min(g1), min(gr)))
        print(f"{path}: seed {r['config']['seed']} lr {r['config']['learning_rate']} step "
              f"{at['step']:.2f} rank {k}: s1/s2 {g1[0]:.2f}, {g1[1]:.2f}; s{k}/s{k + 1} "
              f"{gr[0]:.2f}, {gr[1]:.2f} (steps {ev[lo]:.0f}, {ev[hi]:.0f}); C2 gap at the "
              f"crossing {r['criteria']['C2_depth'].get('gap_at_crossing') or math.nan:.2f}")
    if rows:
        a = np.asarray(rows)
        print(f"== {path}: {len(rows)} crossings; s1/s2 median {np.median(a[:, 0]):.2f} "
              f"({a[:, 0].min():.2f}-{a[:, 0].max():.2f}), >= 10 in {(a[:, 0] >= 10).sum()}; "
              f"s_r/s_r+1 median {np.median(a[:, 1]):.2f} ({a[:, 1].min():.2f}-"
              f"{a[:, 1].max():.2f}), >= 10 in {(a[:, 1] >= 10).sum()}")
