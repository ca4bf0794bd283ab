#!/usr/bin/env bash
# The chaos run in CI (issue 12.8, docs/cluster.md "Failure handling"): scripts/chaos with 30 s of
# faults on a tiny model, 2 replicas x 2 stages + a vision worker, 16 concurrent streaming greedy
# clients (text and image); stage workers SIGKILLed and restarted at once under the same id and
# endpoint (3x) and once only after the dead timeout, the vision worker SIGSTOPped for 5 s, the
# coordinator restarted once. Fails unless: 0 hung streams (none silent > 10 s), every stream
# equal chunk by chunk to its undisturbed answer, >= 99 % success, every KV block back in the pool
# and no sequence left on any stage, text-only inter-token p99 with the vision worker stopped
# within 2x of normal. Bounded by scripts/chaos itself (duration + 90 s) and the ctest timeout.
# usage: cluster_chaos.sh BIN_DIR
set -euo pipefail
bin=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
python3 "$root/scripts/chaos" --bin "$bin" --duration 30 --clients 16
