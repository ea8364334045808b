#!/usr/bin/env bash
# mpi-tbf.sh -- the MPI transport on a rate-limited wire: how much transfer time compute hides,
# and how well the in-process link model predicts it.
#
# All ranks run inside a private network namespace on its loopback, shaped with `tc tbf`
# (netem does not exist on these kernels; nothing outside the namespace is slowed). For each
# schedule (sequential, two-microbatch) it runs `generate` under mpirun with the placement
# "experts on other nodes" (stages on rank 0, experts on ranks 1..N-1), alternating shaped and
# unshaped runs REPS times, and reads rank 0's trace:
#   T            = generation time (first kernel start .. last kernel end on rank 0's streams)
#   wire         = bytes exchanged (trace pid 3) * 8 / RATE
#   hidden(wall) = 1 - (median T shaped - median T unshaped) / wire
#   hidden(direct) = 1 - (transfer time with no kernel running on rank 0) / (transfer time)
# Then the same placement in ONE process with [placement.link] at the same rate (the link model)
# gives T_model; it prints T_model / T_shaped.
# Needs root (ip netns, tc), Open MPI and a troupe built with --features mpi (BIN).
# LAYOUT=dp runs the data-parallel layout instead (attention = "data-parallel", experts on every
# rank; request i on rank i mod NODES); its transfer columns are rank 0's, and the link model
# (one process has no data-parallel attention) is not compared.
# Env: MODEL, RATE (tbf rate, e.g. 20mbit), GBPS (the same rate for the link model, Gbit/s),
# NODES, REPS, NEW (new tokens), SEQS (requests), BIN, LAYOUT (staged | dp).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-tests/fixtures/deepseek-v3-tiny}
RATE=${RATE:-20mbit}
GBPS=${GBPS:-0.02}
NODES=${NODES:-2}
REPS=${REPS:-3}
NEW=${NEW:-32}
SEQS=${SEQS:-8}
BIN=${BIN:-target/release/troupe}
EXPERTS=${EXPERTS:-16}
LAYOUT=${LAYOUT:-staged}
WORK=$(mktemp -d)
NS="troupe-tbf-$$"
ip netns add "$NS"
trap 'ip netns del "$NS" 2>/dev/null; rm -rf "$WORK"' EXIT
ip netns exec "$NS" ip link set lo mtu 1500 up
ip netns exec "$NS" ethtool -K lo gso off tso off 2>/dev/null || true
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
python3 -c "
for i in range($SEQS): print('{\"prompt_ids\": [0, %d, 9, 7]}' % (10 + i))" > "$WORK/prompts.jsonl"
nodes_list=$(python3 -c "print(list(range(1, $NODES)))")
dp_line=""
if [ "$LAYOUT" = dp ]; then
    nodes_list=$(python3 -c "print(list(range($NODES)))")
    dp_line='attention = "data-parallel"'
fi

# One expert group per expert rank, so the link model books one message per (layer, micro-batch,
# rank) as the MPI transport sends (with several groups per rank it would send rows once per group).
expert_ranks=$(python3 -c "print(len($nodes_list))")
group_size=$(( (EXPERTS + expert_ranks - 1) / expert_ranks ))
placement() { # $1 schedule, $2 extra lines, $3 attention line
    printf '[placement]\nnodes = %s\nstreams = 2\nexpert_group_size = '"$group_size"'\nexpert_nodes = %s\n%s\n%s\n[schedule]\nkind = "%s"\n' \
        "$NODES" "$nodes_list" "${3:-}" "$2" "$1"
}
# lo's 64 KiB MTU (and GSO) make packets larger than a tbf bucket, which tbf never sends: use
# Ethernet-sized packets.
shape() { ip netns exec "$NS" tc qdisc replace dev lo root tbf rate "$RATE" burst 64kb latency 1s; }
unshape() { ip netns exec "$NS" tc qdisc del dev lo root 2>/dev/null || true; }
run_mpi() { # $1 schedule, $2 trace
    placement "$1" "" "$dp_line" > "$WORK/p.toml"
    ip netns exec "$NS" mpirun -n "$NODES" --oversubscribe --bind-to none --mca btl tcp,self \
        --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
        "$BIN" generate -m "$MODEL" --prompts-file "$WORK/prompts.jsonl" --json -n "$NEW" -t 1 \
        --placement "$WORK/p.toml" --trace "$2" > /dev/null
}
run_model() { # $1 schedule, $2 trace: one process, the link model at GBPS, one thread per rank
    placement "$1" "$(printf '[placement.link]\ngbps = %s\nlatency_us = 0' "$GBPS")" > "$WORK/l.toml"
    "$BIN" generate -m "$MODEL" --prompts-file "$WORK/prompts.jsonl" --json -n "$NEW" -t "$NODES" \
        --placement "$WORK/l.toml" --trace "$2" > /dev/null
}

for schedule in sequential two-microbatch; do
    for r in $(seq "$REPS"); do
        unshape; run_mpi "$schedule" "$WORK/$schedule-off-$r.json"
        shape; run_mpi "$schedule" "$WORK/$schedule-on-$r.json"
        if [ "$LAYOUT" = staged ]; then unshape; run_model "$schedule" "$WORK/$schedule-model-$r.json"; fi
    done
done
unshape

python3 - "$WORK" "$REPS" "$RATE" "$LAYOUT" <<'PY'
import json, os, statistics, sys
work, reps, rate, layout = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
bps = next(float(rate[:-len(u)]) * m for u, m in units.items() if rate.endswith(u))

def union(iv):
    out = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out

def length(iv):
    return sum(b - a for a, b in iv)

def minus(a, b):  # measure of union a not covered by union b
    total, j = 0.0, 0
    for s, e in a:
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            total += max(0.0, min(bs, e) - cur)
            cur = max(cur, be)
        total += max(0.0, e - cur)
    return total

def read(path):
    ev = json.load(open(path))["traceEvents"]
    k = [(e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("ph") == "X" and e.get("pid") == 1]
    p = [e for e in ev if e.get("ph") == "X" and e.get("pid") == 3]
    t = (max(b for _, b in k) - min(a for a, _ in k)) / 1e6
    nbytes = sum(e["args"]["bytes_out"] + e["args"]["bytes_back"] for e in p)
    xfer = union([(e["ts"], e["ts"] + e["dur"]) for e in p])
    exposed = minus(xfer, union(k))
    direct = 1 - exposed / length(xfer) if xfer else float("nan")
    return t, nbytes, direct

for sched in ["sequential", "two-microbatch"]:
    on = [read(f"{work}/{sched}-on-{r}.json") for r in range(1, reps + 1)]
    off = [read(f"{work}/{sched}-off-{r}.json") for r in range(1, reps + 1)]
    model = []
    for r in range(1, reps + 1):
        if layout != "staged":
            break
        ev = json.load(open(f"{work}/{sched}-model-{r}.json"))["traceEvents"]
        k = [(e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("ph") == "X" and e.get("pid") == 1]
        model.append((max(b for _, b in k) - min(a for a, _ in k)) / 1e6)
    t_on = statistics.median(x[0] for x in on)
    t_off = statistics.median(x[0] for x in off)
    t_model = statistics.median(model) if model else float("nan")
    nbytes = statistics.median(x[1] for x in on)
    wire = nbytes * 8 / bps
    print(f"{layout} {sched}: T shaped {t_on:.3f} s, unshaped {t_off:.3f} s, bytes {nbytes:.0f}, wire {wire:.3f} s at {rate}; "
          f"hidden(wall) {1 - (t_on - t_off) / wire:.1%}; hidden(direct, shaped) {statistics.median(x[2] for x in on):.1%}; "
          f"link model {t_model:.3f} s = {t_model / t_on:.2f}x the shaped MPI time")
PY
