#!/usr/bin/env bash
# Measures the figures of BENCHMARKS.md on this machine and prints them.
# Every figure is a ratio against a baseline measured in the same run.
#   1. cache-hit GetToken vs grpc.health.v1.Health/Check, with ghz (pinned
#      in tools/ghz/go.mod), same server, same concurrency; also the
#      broker's own CPU per call of each, read from /proc;
#   2. cold path vs raw RSA signing (Go benchmark);
#   3. stampedes (Go tests);  4. heap per entry (Go benchmark);
#   5. outage (Go test);  sign latency per key backend vs the file backend;
#   the latency one sequential caller sees on a cache hit vs Health/Check.
# Usage: bash scripts/bench.sh [ROUNDS]   (default 15 ghz rounds of a
# health run and a token run each, in alternating order; the figure is the
# median of the per-round ratios, which cancels most of the machine's drift)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-15}"
conc="${GHZ_CONCURRENCY:-32}"
total="${GHZ_REQUESTS:-20000}"

scripts/tools.sh
GOBIN="$PWD/.tmp/bin" go install -modfile=tools/ghz/go.mod tool
export PATH="$PWD/.tmp/bin:$PATH"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3)"

echo "== figures 2-5 (Go)"
go test -count=1 -run 'TestFigure' -v ./broker/ | grep FIGURE | sed 's/^ *figures_test.go:[0-9]*: //'
go test -count=1 -run '^$' -bench 'BenchmarkFigure' -benchtime 3x ./broker/ | grep -o 'FIGURE.*runs=3$'

echo "== several replicas sharing a cache in Redis (broker/sharedcache; needs redis-server)"
go test -count=1 -run 'TestShared|TestFigureShared' -v ./broker/sharedcache/ | grep -o 'FIGURE.*'

echo "== signing backends (Go benchmark, 400 sequential signatures each)"
go test -count=1 -run '^$' -bench 'BenchmarkFigureSignLatency' -benchtime 1x ./cmd/tokenbroker/ | grep -o 'FIGURE.*'

echo "== cache-hit latency of one sequential caller (Go benchmark, generated client, loopback)"
go test -count=1 -run '^$' -bench 'BenchmarkFigureHitLatency' -benchtime 1x ./server/ | grep -o 'FIGURE.*'

echo "== figure 1 (ghz, concurrency $conc, $total requests per run, $rounds rounds)"
go build -o .tmp/tokenbroker ./cmd/tokenbroker
addr=127.0.0.1:50071
out="$(mktemp -d)"
fig1_pid=
trap 'kill $fig1_pid 2>/dev/null || true; rm -rf "$out"' EXIT
source scripts/figure1-lib.sh
fig1_start .tmp/tokenbroker "$addr" "$out/dev.out"
for r in $(seq "$rounds"); do
  fig1_round "$fig1_pid" "$addr" "$conc" "$total" "$r" "$out/"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def run(name, r):
    d = json.load(open(f"{out}/{name}.{r}.json"))
    p99 = next(x["latency"] for x in d["latencyDistribution"] if x["percentage"] == 99) / 1e6
    errs = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if k != "OK")
    cpu_us = int(open(f"{out}/{name}.{r}.cpu").read()) / d["count"] / 1e3
    return d["rps"], p99, errs, cpu_us
h = [run("health", r) for r in range(1, rounds + 1)]
t = [run("token", r) for r in range(1, rounds + 1)]
med = statistics.median
print(f"FIGURE cache_hit health_rps={med(x[0] for x in h):.0f} token_rps={med(x[0] for x in t):.0f} "
      f"rps_ratio={med(b[0]/a[0] for a, b in zip(h, t)):.3f} "
      f"health_p99_ms={med(x[1] for x in h):.3f} token_p99_ms={med(x[1] for x in t):.3f} "
      f"p99_ratio={med(b[1]/a[1] for a, b in zip(h, t)):.3f} "
      f"round_rps_ratios={','.join(f'{b[0]/a[0]:.2f}' for a, b in zip(h, t))} errors={sum(x[2] for x in h + t)}")
print(f"FIGURE broker_cpu_per_call health_us={med(x[3] for x in h):.1f} token_us={med(x[3] for x in t):.1f} "
      f"ratio={med(a[3]/b[3] for a, b in zip(h, t)):.3f}")
PY
