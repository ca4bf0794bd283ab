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
out=$(timeout 150 "$xcpipe" bench model --layers 2 --hidden 64 --heads 4 --kv-heads 2 --inter 128 \
    --vocab 64 --rank 8 --threads 1 --pp 8 --tg 6 --reps 1 --paired --dir "$dir/ckpt")
echo "$out"
grep -qE '^pp8 +1 +[0-9.]+ ' <<<"$out" || { echo "FAIL: no pp8 line"; exit 1; }
# the prefill's compute against the FMA peak (x86 with AVX2/FMA): the FLOPs per prompt token
# implied by the line are the model's, counted here from the shapes (2 layers; the last one runs
# its attention query, wo, the FFN and the head on the last row only), and the share is the
# printed GFLOP/s over the printed peak
if grep -q avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
    line=$(grep -E '^pp8 .*\(compute: ' <<<"$out") || { echo "FAIL: no compute figures on pp8"; exit 1; }
    awk '{
        # pp8 1 tok/s ms (compute: G GFLOP/s, NN% of the FMA peak P)
        tps = $3; g = $6; share = $8 + 0; peak = $13 + 0
        qkv = (4 + 2 * 2) * 16 * 64; rest = 64 * 64 + 3 * 128 * 64; n = 8
        want = (2 * (qkv + rest) * n + 2 * 64 * n * (n + 1) + 2 * qkv * n + 4 * 64 * n + 2 * rest + 2 * 64 * 64) / n
        got = g * 1e9 / tps
        if (!(tps > 0 && g > 0 && peak > 0)) { print "FAIL: rates " $0; exit 1 }
        if (got < want * 0.97 || got > want * 1.03) { print "FAIL: " got " FLOP per token, want " want; exit 1 }
        if (share < 100 * g / peak - 1 || share > 100 * g / peak + 1) { print "FAIL: share " share "% is not " g " of " peak; exit 1 }
    }' <<<"$line"
    # in forwards of 3 rows (3 + 3 + 2): each forward's last row runs the last layer and the head,
    # and attention counts the keys cached by the earlier forwards
    line=$(timeout 60 "$xcpipe" bench model --layers 2 --hidden 64 --heads 4 --kv-heads 2 --inter 128 \
        --vocab 64 --rank 8 --threads 1 --pp 8 --tg 2 --reps 1 --chunk 3 --dir "$dir/ckpt" |
        grep -E '^pp8 .*\(compute: ') || { echo "FAIL: no pp8 line with --chunk 3"; exit 1; }
    echo "$line"
    awk '{
        tps = $3; g = $6
        qkv = (4 + 2 * 2) * 16 * 64; rest = 64 * 64 + 3 * 128 * 64; n = 8; want = 0
        for (p = 0; p < n; p += 3) {
            s = n - p < 3 ? n - p : 3; pairs = s * p + s * (s + 1) / 2
            want += 2 * (qkv + rest) * s + 4 * 64 * pairs + 2 * qkv * s + 4 * 64 * (p + s) + 2 * rest + 2 * 64 * 64
        }
        want /= n; got = g * 1e9 / tps
        if (got < want * 0.97 || got > want * 1.03) { print "FAIL: chunked: " got " FLOP per token, want " want; exit 1 }
    }' <<<"$line"
fi
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
