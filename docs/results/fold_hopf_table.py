"""The issue-17 summary table (docs/student_teacher.md, "Fold and Hopf tasks: summary"): one row
per task, N and learning rate, from the `summary.json` of each results folder, with passes/runs
and the Wilson 95% interval (percent) of every criterion, the intended-kind rate and the channel
ranks. C6 is the recorded value (timed before the session-9 amendment, at rate 0.5); "C6,
amended" is the seed-0 timing at the row's own rate (docs/results/c6_amended/): the mean ratio,
pass or fail, and the ratio per accepted solver step.

    python docs/results/fold_hopf_table.py"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDERS = [("fold", "task_fold_fixed"), ("Hopf, ω fixed", "task_hopf_fixed"),
           ("Hopf, ω trained", "task_hopf_trained"), ("fold", "task_fold_n32"),
           ("Hopf, ω fixed", "task_hopf_fixed_n32"), ("Hopf, ω trained", "task_hopf_trained_n32")]
AMENDED = {"task_fold_fixed": "fold_n10", "task_hopf_fixed": "hopf_fixed_n10",
           "task_hopf_trained": "hopf_trained_n10", "task_fold_n32": "fold_n32",
           "task_hopf_fixed_n32": "hopf_fixed_n32", "task_hopf_trained_n32": "hopf_trained_n32"}
NAMES = ["C1_localisation", "C2_depth", "C3_channel", "C4_normal_form", "C5_optimizer", "C6_cost"]


def cell(c):
    text = f"{c['passes']}/{c['runs']} [{round(100 * c['wilson_low'])}, " \
           f"{round(100 * c['wilson_high'])}]"
    return text + (f", n/a {c['not_assessable']}" if c.get("not_assessable") else "")




def amended(folder, lr):
    path = os.path.join(HERE, "c6_amended", f"{AMENDED[folder]}_{lr}.json")
    if not os.path.exists(path):
        return "–"
    with open(path) as f:
        c6 = json.load(f)["C6_cost"]
    verdict = "pass" if c6["pass"] else "fail"
    return f"{c6['value']:.2f} {verdict} ({c6['per_solver_step_ratio']:.2f})"


print("| task | N | lr | runs | seeds | first kind = intended | channel rank | C1 | C2 | C3 | C4 "
      "| C5 | C6 | C6, amended |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for label, folder in FOLDERS:
    with open(os.path.join(HERE, folder, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(HERE, folder, "runs.jsonl")) as f:
        seeds = sorted({json.loads(line)["config"]["seed"] for line in f})
    for g in summary["tasks"]:
        ik = g["intended_kind_first"]
        ranks = ", ".join(f"{k}: {v}" for k, v in sorted(g["channel_ranks"].items()))
        print(f"| {label} | {g['hidden']} | {g['learning_rate']} | {g['runs']} | "
              f"{seeds[0]}–{seeds[-1]} | {g['intended_kind']} {cell(ik)} | {ranks} | "
              + " | ".join(cell(g["criteria"][n]) for n in NAMES)
              + f" | {amended(folder, g['learning_rate'])} |")
