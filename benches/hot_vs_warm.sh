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
# The measurement is the in-crate test listener/pool_tests.rs (it also
# asserts that hot serves the first request sooner than warm).
REPS="${REPS:-9}" exec cargo test --release -p continuity-proxy --lib \
  hot_vs_warm_failover_first_request -- --nocapture
