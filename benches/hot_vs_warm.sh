#!/usr/bin/env bash
# Failover latency, redundancy = hot (pre-connected standby connections)
# against warm (connects on failover). Needs redis-server on PATH.
# Each failover: a new connection with a PING every 10 ms through the proxy,
# the primary SIGKILLed after 300 ms; hot and warm interleaved; run once with
# the secondary reached directly and once behind a relay that waits 50 ms
# before connecting on (a remote DR site or a TLS handshake).
# REPS=9 failovers per mode and setting by default.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release -p continuity-proxy --test pools \
  bench_hot_vs_warm_failover -- --ignored --nocapture
