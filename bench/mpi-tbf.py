#!/usr/bin/env python3
"""mpi-tbf.py -- reads the traces and tc counters bench/mpi-tbf.sh collected, and prints how much
transfer time compute hid and how well the in-process link model predicted the step time.

Usage: mpi-tbf.py params WORK REPS RATE  -> prints "GBPS LATENCY_US" for the link model
       mpi-tbf.py report WORK REPS RATE LAYOUT

Files in WORK: {sched}-{off,on}-{r}.json (rank 0's trace of an unshaped / shaped MPI run),
{sched}-on-{r}.tc (bytes tc's tbf sent during that shaped run), {sched}-{model,nolink}-{r}.json
(one process: the link model / no link).

Per shaped run, from rank 0's trace:
  T         generation time: first kernel start .. last kernel end on rank 0's streams (pid 1)
  compute   rank 0's busy time: union of its kernels (pid 1) and the expert work it computed for
            other ranks (pid 4)
  exchange  a request to a peer and its reply (pid 3): the peer says how long it had the request
            (served_us) and, on one host, when it got it (served_at_us). The transfer intervals
            are the exchange minus that: [start, start+served_at] (request in transit) and
            [start+served_at+served, end] (reply in transit), latencies included. Without
            served_at (ranks on different hosts) the wire time is split at both ends in
            proportion to the bytes each way.
  hidden(direct) = 1 - (transfer time with no compute on rank 0) / (transfer time)
  hidden(wall)   = 1 - (median T shaped - median T unshaped) / wire,
                   wire = bytes tbf sent (payload, TCP/IP headers, ACKs, start-up) * 8 / RATE
"""
import json
import statistics
import sys


def rate_bps(rate):
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, m in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * m
    raise SystemExit(f"RATE {rate!r}: expected a number with kbit, mbit or gbit")


def union(iv):
    out = []
    for a, b in sorted(iv):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def length(iv):
    return sum(b - a for a, b in iv)


def minus(a, b):
    """Measure of union `a` not covered by union `b` (both sorted, disjoint)."""
    total, j = 0.0, 0
    for s, e in a:
        cur = s
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > cur:
                total += b[k][0] - cur
            cur = max(cur, b[k][1])
            k += 1
        total += max(0.0, e - cur)
    return total


def spans(ev, pid):
    return [e for e in ev if e.get("ph") == "X" and e.get("pid") == pid]


def transfer_intervals(e):
    s, d, a = e["ts"], e["dur"], e["args"]
    served, at = a.get("served_us", 0.0), a.get("served_at_us")
    if at is not None:
        return [(s, s + at), (s + at + served, s + d)]
    wire = max(0.0, d - served)
    out, back = a["bytes_out"], a["bytes_back"]
    f = out / (out + back) if out + back else 0.5
    return [(s, s + wire * f), (s + d - wire * (1 - f), s + d)]


def read(path):
    ev = json.load(open(path))["traceEvents"]
    k = [(e["ts"], e["ts"] + e["dur"]) for e in spans(ev, 1)]
    t = (max(b for _, b in k) - min(a for a, _ in k)) / 1e6
    busy = union(k + [(e["ts"], e["ts"] + e["dur"]) for e in spans(ev, 4)])
    ex = spans(ev, 3)
    xfer = union([iv for e in ex for iv in transfer_intervals(e)])
    return {
        "T": t,
        "bytes": sum(e["args"]["bytes_out"] + e["args"]["bytes_back"] for e in ex),
        "exchanges": len(ex),
        "transfer": length(xfer) / 1e6,
        "exposed": minus(xfer, busy) / 1e6,
        "compute": length(busy) / 1e6,
        # Per exchange: time in transit (exchange minus the peer's time).
        "transit_us": [max(0.0, e["dur"] - e["args"].get("served_us", 0.0)) for e in ex],
    }


def runs(work, sched, kind, reps):
    return [read(f"{work}/{sched}-{kind}-{r}.json") for r in range(1, reps + 1)]


def tc_bytes(work, sched, r):
    return int(open(f"{work}/{sched}-on-{r}.tc").read().split()[0])


def params(work, reps, rate):
    """The link model's inputs, measured on the MPI runs: bandwidth = RATE x payload / bytes tbf
    sent (what headers, ACKs and framing leave for troupe's bytes), latency = half the median
    transit time of an unshaped exchange (one way, what the loopback, MPI and the probing threads
    add)."""
    payload = wire = 0
    transit = []
    for sched in ["sequential", "two-microbatch"]:
        for r in range(1, reps + 1):
            payload += read(f"{work}/{sched}-on-{r}.json")["bytes"]
            wire += tc_bytes(work, sched, r)
            transit += read(f"{work}/{sched}-off-{r}.json")["transit_us"]
    goodput = rate_bps(rate) * payload / wire
    return goodput / 1e9, statistics.median(transit) / 2, payload / wire


def fmt(xs, spec=".3f"):
    return ", ".join(format(x, spec) for x in xs)


def main():
    mode, work = sys.argv[1], sys.argv[2]
    reps, rate = int(sys.argv[3]), sys.argv[4]
    if mode == "params":
        gbps, lat, _ = params(work, reps, rate)
        print(f"{gbps:.6f} {lat:.1f}")
        return
    layout = sys.argv[5]
    bps = rate_bps(rate)
    med = statistics.median
    for sched in ["sequential", "two-microbatch"]:
        on, off = runs(work, sched, "on", reps), runs(work, sched, "off", reps)
        wire = med(tc_bytes(work, sched, r) for r in range(1, reps + 1)) * 8 / bps
        t_on, t_off = med(x["T"] for x in on), med(x["T"] for x in off)
        steps = on[0]["exchanges"]
        direct = [1 - x["exposed"] / x["transfer"] for x in on]
        print(
            f"{layout} {sched}: T shaped {t_on:.3f} s (runs {fmt(x['T'] for x in on)}), "
            f"unshaped {t_off:.3f} s; wire {wire:.3f} s at {rate} ({med(x['bytes'] for x in on):.0f} B payload "
            f"in {steps} exchanges); rank 0 compute {med(x['compute'] for x in on):.3f} s; "
            f"transfer {med(x['transfer'] for x in on):.3f} s, exposed {med(x['exposed'] for x in on):.3f} s"
        )
        print(
            f"  hidden(direct) {med(direct):.1%} (runs {fmt(direct, '.1%')}); "
            f"hidden(wall) {1 - (t_on - t_off) / wire:.1%}"
        )
        if layout == "staged":
            t_model = med(x["T"] for x in runs(work, sched, "model", reps))
            t_nolink = med(x["T"] for x in runs(work, sched, "nolink", reps))
            print(
                f"  link model: T {t_model:.3f} s = {t_model / t_on:.2f}x the shaped MPI time; "
                f"without the link {t_nolink:.3f} s = {t_nolink / t_off:.2f}x the unshaped; "
                f"time the link adds: model {t_model - t_nolink:.3f} s, MPI {t_on - t_off:.3f} s"
            )
    if layout == "staged":
        gbps, lat, share = params(work, reps, rate)
        print(
            f"link model inputs: {gbps:.4f} Gbit/s ({share:.1%} of the tbf bytes were troupe's payload), "
            f"latency {lat:.0f} us per transfer (half an unshaped exchange's transit)"
        )


if __name__ == "__main__":
    main()
