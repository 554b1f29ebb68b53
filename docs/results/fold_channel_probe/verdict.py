import json, sys, math, statistics as st
recs = json.load(open(sys.argv[1]))
def wilson(k, n, z=1.96):
    if n == 0: return (float('nan'),)*2
    p = k/n; d = 1+z*z/n; c = (p+z*z/(2*n))/d; h = z*math.sqrt(p*(1-p)/n+z*z/(4*n*n))/d
    return max(0, c-h), min(1, c+h)
print("| seed | lr | first | birth | step | recorded | O | P | H | A | λ2/λ1 O, P, H, A | closest approach | ‖x_A − x*‖ |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in recs:
    if not r.get("first"):
        print(f"| {r['seed']} | {r['lr']} | none | | | {r['recorded_rank']} | | | | | | | |"); continue
    print(f"| {r['seed']} | {r['lr']} | {r['first']} | {r['birth']} | {r['step']:.2f} | {r['recorded_rank']} | "
          + " | ".join(str(r[k]['rank']) for k in 'OPHA') + " | "
          + ", ".join(f"{r[k]['ratio']:.2f}" for k in 'OPHA')
          + f" | {r['min_dist_original']:.3f} | {r['dist_attractor']:.3f} |")
el = [r for r in recs if r.get("first") == "fold" and r.get("birth")]
n = len(el)
print(f"\neligible (first event a fold birth): {n}")
print("O reproduces recorded rank:", sum(r['O']['rank'] == r['recorded_rank'] for r in recs if r.get('first')), "/", sum(1 for r in recs if r.get('first')))
for k in "OPHA":
    k1 = sum(r[k]['rank'] == 1 for r in el)
    lo, hi = wilson(k1, n)
    rat = [r[k]['ratio'] for r in el]
    print(f"{k}: rank 1 in {k1}/{n} [{100*lo:.0f}, {100*hi:.0f}]; λ2/λ1 median {st.median(rat):.3f} range {min(rat):.3f}-{max(rat):.3f}; energy median {st.median(r[k]['energy'] for r in el):.2f}")
p1 = sum(r['P']['rank'] == 1 for r in el) / n; a1 = sum(r['A']['rank'] == 1 for r in el) / n
print("verdict:", "confirmed" if p1 >= 0.9 and a1 <= 0.5 else "refuted" if p1 < 0.5 else "inconclusive")
print("closest approach median", st.median(r['min_dist_original'] for r in el), "‖x_A-x*‖ median", st.median(r['dist_attractor'] for r in el))
