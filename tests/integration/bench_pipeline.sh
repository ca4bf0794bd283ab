#!/bin/bash
# xcpipe bench pipeline, small and fast (issue 15.4): every shape runs (4 decode shapes, the long
# prompt up to P = 8) and reports an efficiency that a schedule can reach: at most the placement's
# bound (the slowest stage's rate, from the cost model alone) plus 0.03 for the window's edges
# (results computed before the window but handled after its start: at most P + 1 micro-batches
# against ~90 per group in it).
# The sim stage's timing rule itself is tested in test_worker (sim_start_rule, sim_stage_queue).
# There is no lower limit beyond "tokens came": a loaded machine wakes threads late, and speed
# figures belong to the benchmark itself.
set -euo pipefail
xcpipe=$1
out=$(timeout 120 "$xcpipe" bench pipeline --scale 1 --new-tokens 96 --long-prompt 512)
echo "$out"
n=$(grep -cE '^(1|2) x [0-9]+ ' <<<"$out" || true)
[ "$n" = 4 ] || { echo "FAIL: expected 4 decode shapes, got $n"; exit 1; }
awk '
/^(1|2) x [0-9]+ / {
    eff = $6; bound = $7
    if (!(bound > 0.8 && bound <= 1)) { print "FAIL: bound " bound " in: " $0; bad = 1 }
    if (eff > bound + 0.03) { print "FAIL: efficiency " eff " above the bound " bound ": " $0; bad = 1 }
    if (!(eff > 0)) { print "FAIL: no tokens: " $0; bad = 1 }
}
END { exit bad }' <<<"$out"
grep -qE '^8 +[0-9.]+ +[0-9.]+ ' <<<"$out" || { echo "FAIL: no long-prompt row for P = 8"; exit 1; }
echo "ok: bench pipeline shapes within their bounds"
