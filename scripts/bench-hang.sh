#!/usr/bin/env bash
# Measures the hang and hedging figures of BENCHMARKS.md (issue 14) with the
# shipped defaults and prints the median of RUNS runs (default 5) with every
# run's value. Each run is one `go test` process running, in this order:
#   TestFigureHangRecovery  10 warm orgs, 20 callers (2 s deadline), a 12 s
#                           hang over 6 s tokens: recovery time, calls that
#                           waited past 100 ms;
#   TestFigureHangCold      the same callers on 10 cold orgs, hung from the
#                           start for 4 s;
#   TestFigureSlowAttempts  300 cold fetches at 40/s with every 20th attempt
#                           answered after 1 s, hedged and unhedged.
# About 40 s per run. Usage: bash scripts/bench-hang.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3)"
go test -c -o "$out/broker.test" ./broker/
for r in $(seq "$runs"); do
  TOKENBROKER_FIGURES=1 "$out/broker.test" -test.count=1 -test.v \
    -test.run '^(TestFigureHangRecovery|TestFigureHangCold|TestFigureSlowAttempts)$' >"$out/run.$r" 2>&1 ||
    { cat "$out/run.$r"; echo "run $r failed"; exit 1; }
  grep -o 'FIGURE.*' "$out/run.$r" | sed "s/^/run $r: /"
done
python3 - "$out" "$runs" <<'PY'
import re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
figs = {}
for r in range(1, runs + 1):
    for line in open(f"{out}/run.{r}"):
        m = re.search(r"FIGURE (\S+) (.*)", line)
        if not m:
            continue
        kv = dict(x.split("=", 1) for x in m.group(2).split())
        name = m.group(1) + (("_" + kv.pop("mode")) if "mode" in kv else "")
        figs.setdefault(name, []).append(kv)
for name, rows in figs.items():
    parts = []
    for k in rows[0]:
        try:
            vals = [float(row[k]) for row in rows]
        except ValueError:
            continue
        med = statistics.median(vals)
        fmt = lambda v: f"{v:.4f}" if k in ("share", "extra_grants") else (f"{v:.2f}" if k.endswith("_s") else f"{v:g}")
        parts.append(f"{k}={fmt(med)} [{','.join(fmt(v) for v in vals)}]")
    print(f"MEDIAN {name} runs={len(rows)} " + " ".join(parts))
PY
