#!/bin/bash
# xcpipe bench model on tiny shapes: every line it promises comes out, and --paired (a read of the
# bandwidth buffer after every decode step) counts every step after the first and reports shares
# that are ratios of two positive rates. Speed figures belong to the benchmark itself; the checks
# here are on form and arithmetic only (a share is the step rate over the read rate, so it must be
# positive and finite; the median lies within the 10th-90th range).
set -euo pipefail
xcpipe=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
out=$(timeout 150 "$xcpipe" bench model --layers 1 --hidden 64 --heads 4 --kv-heads 2 --inter 128 \
    --vocab 64 --rank 8 --threads 1 --pp 8 --tg 6 --reps 1 --paired --dir "$dir/ckpt")
echo "$out"
grep -qE '^pp8 +1 +[0-9.]+ ' <<<"$out" || { echo "FAIL: no pp8 line"; exit 1; }
grep -qE '^tg6 +1 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9]+% of [0-9.]+$' <<<"$out" ||
    { echo "FAIL: no tg6 line with its share of the read bandwidth"; exit 1; }
line=$(grep -E '^tg6-p ' <<<"$out") || { echo "FAIL: no paired line"; exit 1; }
awk '{
    # tg6-p 1 tok/s ms GB/s NN% of REF (paired: 5 steps, median step NN%, 10th-90th A-B%)
    tps = $3; gbs = $5; share = $6 + 0; ref = $8
    steps = $10 + 0; med = $14 + 0; split($16, r, "-"); lo = r[1] + 0; hi = r[2] + 0
    if (!(tps > 0 && gbs > 0 && ref > 0 && share > 0)) { print "FAIL: rates " $0; exit 1 }
    if (steps != 5) { print "FAIL: expected 5 paired steps (6 tokens, the first is the prefill): " steps; exit 1 }
    if (!(lo > 0 && lo <= med && med <= hi)) { print "FAIL: median " med " outside " lo "-" hi; exit 1 }
    want = 100 * gbs / ref
    if (share < want - 1 || share > want + 1) { print "FAIL: share " share "% is not " gbs " of " ref; exit 1 }
}' <<<"$line"
# bad input: a clear error, exit 2
if "$xcpipe" bench model --tg 1 --dir "$dir/ckpt" 2>"$dir/err"; then
    echo "FAIL: --tg 1 accepted"; exit 1
fi
grep -q "tg" "$dir/err" || { echo "FAIL: no message for --tg 1"; cat "$dir/err"; exit 1; }
echo "ok: bench model lines and the paired decode measurement"
