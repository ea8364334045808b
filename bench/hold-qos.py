#!/usr/bin/env python3
"""Runs a command while holding a 0 us PM QoS wake-up latency request (/dev/cpu_dma_latency),
so that every process of it, troupe's and its peers' alike, runs on processors that poll instead
of halting when idle. troupe holds the same request by itself during its passes
(engine/src/kernels/awake.rs); this wrapper gives a peer engine (llama.cpp) the same condition
for a side-by-side run:

    python3 bench/hold-qos.py bash bench/vs-llama-cpp.sh

Needs write access to /dev/cpu_dma_latency (root). The request ends when this process exits."""
import os
import subprocess
import sys

if len(sys.argv) < 2:
    sys.exit("usage: hold-qos.py COMMAND [ARGS...]")
fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
os.write(fd, (0).to_bytes(4, sys.byteorder))
sys.exit(subprocess.call(sys.argv[1:]))
