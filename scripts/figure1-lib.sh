# How figure 1 of BENCHMARKS.md is measured, shared by scripts/bench.sh and
# scripts/figure1-controls.sh so that the figure and its controls cannot
# drift apart. Source it; needs ghz and grpcurl on PATH.

# fig1_req is the GetToken request of the warm key.
fig1_req='{"customer_org":"310904473","scopes":["altinn:systembruker.demo"]}'

# fig1_start BIN ADDR LOG: starts BIN in dev mode on ADDR (stdout to LOG),
# waits until it serves and warms fig1_req's key. Sets fig1_pid.
fig1_start() {
  "$1" dev --listen "$2" > "$3" 2> /dev/null &
  fig1_pid=$!
  for _ in $(seq 50); do grep -q serving "$3" 2>/dev/null && break; sleep 0.1; done
  grpcurl -plaintext -d "$fig1_req" "$2" tokenbroker.v1.TokenBrokerService/GetToken > /dev/null
}

# fig1_cpu_ns PID: CPU time the process's threads have used so far, in ns.
fig1_cpu_ns() { awk '{s += $1} END {printf "%.0f", s}' /proc/"$1"/task/*/schedstat; }

# fig1_round PID ADDR CONC TOTAL ROUND PREFIX: one health run and one
# token run of TOTAL requests at concurrency CONC against ADDR, served by
# PID. Odd rounds run health first, even ones token first, so that drift
# within a round favours neither. Writes PREFIX{health,token}.ROUND.json
# (ghz's report) and .cpu (the server's CPU ns during the run).
fig1_round() {
  local pid="$1" addr="$2" conc="$3" total="$4" r="$5" prefix="$6"
  run() { # NAME CALL DATA
    local before
    before="$(fig1_cpu_ns "$pid")"
    ghz --insecure --call "$2" -d "$3" -c "$conc" -n "$total" -O json "$addr" > "$prefix$1.$r.json"
    echo $(( $(fig1_cpu_ns "$pid") - before )) > "$prefix$1.$r.cpu"
  }
  health() { run health grpc.health.v1.Health/Check '{}'; }
  token() { run token tokenbroker.v1.TokenBrokerService/GetToken "$fig1_req"; }
  if (( r % 2 )); then health; token; else token; health; fi
}
