#!/usr/bin/env bash
# mpi-tbf.sh -- the MPI transport on a rate-limited wire: how much transfer time compute hides,
# and how well the in-process link model predicts it.
#
# All ranks run inside a private network namespace on its loopback, shaped with `tc tbf` at RATE
# with a bucket of BURST bytes (netem does not exist on these kernels; nothing outside the
# namespace is slowed). tbf sits on lo's egress, so requests, replies and ACKs share one bucket:
# one half-duplex wire, as the link model books dispatch and combine. A bucket much larger than a
# packet lets whole messages pass at loopback speed after an idle gap (the 64 KB bucket of the
# first version made shaped runs look faster than the wire); BURST defaults to two packets.
#
# For each schedule (sequential, two-microbatch) it runs `generate` under mpirun, alternating
# unshaped (tbf at FAST) and shaped runs REPS times, with rank 0's trace and tbf's byte counter.
# Then the same
# placement in ONE process, without a link and with [placement.link] (the link model) at the
# bandwidth and latency the MPI runs measured (bench/mpi-tbf.py params: RATE x troupe's share of
# the bytes tbf sent; half an unshaped exchange's transit per transfer). bench/mpi-tbf.py report
# prints T, hidden(direct), hidden(wall) and T_model / T_shaped; its docstring defines them.
#
# LAYOUT=staged: stages on rank 0, experts on ranks 1..N-1 (one expert group per rank, so the link
# model books one message per (layer, micro-batch, rank) as the transport sends).
# LAYOUT=dp: data-parallel attention, experts on every rank; request i on rank i mod NODES; no
# link model (one process has no data-parallel attention).
# Needs root (ip netns, tc), Open MPI and a troupe built with --features mpi (BIN).
# Env: MODEL, RATE (e.g. 1gbit), BURST (bytes), FAST (the unshaped runs' rate), NODES, REPS,
# NEW (new tokens), SEQS (requests), BIN, LAYOUT (staged | dp), EXPERTS (routed experts of MODEL), KEEP (a folder to keep the
# traces in).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-tests/fixtures/deepseek-v3-tiny}
RATE=${RATE:-1gbit}
BURST=${BURST:-3028}
FAST=${FAST:-100gbit}
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
trap 'ip netns del "$NS" 2>/dev/null; if [ -n "${KEEP:-}" ]; then cp -r "$WORK/." "$KEEP"; fi; rm -rf "$WORK"' EXIT
ip netns exec "$NS" ip link set lo mtu 1500 up
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
# Node n's groups on stream cpu{n}: in the one process of the link model each node computes on a
# stream (and, with stream_threads = 1, a thread) of its own, as each rank does on its own.
streams_list=$(python3 -c "print([f'cpu{n}' for n in $nodes_list])" | tr "'" '"')
placement() { # $1 schedule, $2 extra lines, $3 attention line
    printf '[placement]\nnodes = %s\nstreams = %s\nexpert_group_size = %s\nexpert_nodes = %s\nexpert_streams = %s\n%s\n%s\n[schedule]\nkind = "%s"\n' \
        "$NODES" "$NODES" "$group_size" "$nodes_list" "$streams_list" "${3:-}" "$2" "$1"
}
# lo's 64 KiB MTU makes packets larger than a small bucket, which tbf never sends: lo runs at
# MTU 1500 (set above).
tbf() { ip netns exec "$NS" tc qdisc replace dev lo root tbf rate "$1" burst "$2" latency 1s; }
shape() { unshape; tbf "$RATE" "$BURST"; }
sent() { ip netns exec "$NS" tc -s qdisc show dev lo | awk '/Sent/ {print $2; exit}'; }
unshape() { ip netns exec "$NS" tc qdisc del dev lo root 2>/dev/null || true; }
# The unshaped runs go through the same qdisc at FAST (far above what loopback carries here) with
# a 1 MB bucket (a 2-packet bucket at 100 Gbit/s is a quarter of a microsecond: every packet
# then waited for tbf's timer), so shaped and unshaped take one path.
fast() { unshape; tbf "$FAST" 1mb; }
run_mpi() { # $1 schedule, $2 trace
    placement "$1" "" "$dp_line" > "$WORK/p.toml"
    ip netns exec "$NS" mpirun -n "$NODES" --oversubscribe --bind-to none --mca btl tcp,self \
        --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
        "$BIN" generate -m "$MODEL" --prompts-file "$WORK/prompts.jsonl" --json -n "$NEW" -t 1 \
        --placement "$WORK/p.toml" --trace "$2" > /dev/null
}
run_model() { # $1 schedule, $2 trace, $3 link lines: one process, one thread per node's stream
    placement "$1" "$3" "stream_threads = 1" > "$WORK/l.toml"
    "$BIN" generate -m "$MODEL" --prompts-file "$WORK/prompts.jsonl" --json -n "$NEW" -t 1 \
        --placement "$WORK/l.toml" --trace "$2" > /dev/null
}

for schedule in sequential two-microbatch; do
    for r in $(seq "$REPS"); do
        fast; run_mpi "$schedule" "$WORK/$schedule-off-$r.json"
        shape; run_mpi "$schedule" "$WORK/$schedule-on-$r.json"; sent > "$WORK/$schedule-on-$r.tc"
    done
done
unshape
if [ "$LAYOUT" = staged ]; then
    read -r gbps latency < <(python3 bench/mpi-tbf.py params "$WORK" "$REPS" "$RATE")
    link=$(printf '[placement.link]\ngbps = %s\nlatency_us = %s' "$gbps" "$latency")
    for schedule in sequential two-microbatch; do
        for r in $(seq "$REPS"); do
            run_model "$schedule" "$WORK/$schedule-nolink-$r.json" ""
            run_model "$schedule" "$WORK/$schedule-model-$r.json" "$link"
        done
    done
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 bench/mpi-tbf.py report "$WORK" "$REPS" "$RATE" "$LAYOUT"
