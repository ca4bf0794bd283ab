#!/usr/bin/env bash
# Side by side: llama.cpp's llama-bench against `xcpipe bench model` on random weights of the same
# shapes (default: 3 layers of InternLM2-7B, 32,000-row head), in interleaved rounds, printing
# prompt (pp) and generation (tg) tokens/s and their ratio, median of the rounds (each side's
# best repetition in a round). llama.cpp is not a dependency: pass the llama-bench you built.
# Also per round: decode's GB/s against the read bandwidth xcpipe measured in that run, and
# prefill's GFLOP/s against the FMA peak xcpipe measured around its prefill repetitions (each
# program's own FLOPs: llama.cpp's last layer runs attention and wo on every prompt row).
#
#   tools/bench/side-by-side.sh --llama-bench /path/to/llama-bench [options]
#     --xcpipe PATH       xcpipe binary (default build/bin/xcpipe)
#     --weights LIST      bf16,f16 (default both)
#     --threads LIST      1,2 (default)
#     --rounds N          interleaved rounds (default 3; the median is printed)
#     --reps N            repetitions per run, best kept (default 3)
#     --pp N --tg N       prompt and generated tokens (default 512, 128)
#     --vocab N           output head rows (default 32000; InternLM2-7B: 92544)
#     --layers N          decoder layers (default 3)
#     --dir DIR           where the GGUFs and xcpipe checkpoints are kept (default
#                         /tmp/xcpipe-side-by-side)
#     --python PY         a python3 with the gguf package and numpy (default python3)
#     --lock FILE         hold this lock (flock) around each round's runs of one weight type, so
#                         other benchmarks on a shared machine wait (default: none)
#     --paired            also run xcpipe's decode with a read-bandwidth sample after every step
#                         (`bench model --paired`, about 20 s more per run) and print its share
#                         of those samples per round
# Needs: python3 with `gguf` (pip install gguf) to write the GGUF; nothing from llama.cpp at build.
set -euo pipefail

die() { echo "side-by-side.sh: $*" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
LB="" XC="$root/build/bin/xcpipe" WEIGHTS="bf16,f16" THREADS="1,2" ROUNDS=3 REPS=3 PP=512 TG=128
VOCAB=32000 LAYERS=3 DIR=/tmp/xcpipe-side-by-side PY=python3 LOCK="" PAIRED=()
while [ $# -gt 0 ]; do
    case "$1" in
    --llama-bench) LB=${2:-}; shift 2 ;;
    --xcpipe) XC=${2:-}; shift 2 ;;
    --weights) WEIGHTS=${2:-}; shift 2 ;;
    --threads) THREADS=${2:-}; shift 2 ;;
    --rounds) ROUNDS=${2:-}; shift 2 ;;
    --reps) REPS=${2:-}; shift 2 ;;
    --pp) PP=${2:-}; shift 2 ;;
    --tg) TG=${2:-}; shift 2 ;;
    --vocab) VOCAB=${2:-}; shift 2 ;;
    --layers) LAYERS=${2:-}; shift 2 ;;
    --dir) DIR=${2:-}; shift 2 ;;
    --python) PY=${2:-}; shift 2 ;;
    --lock) LOCK=${2:-}; shift 2 ;;
    --paired) PAIRED=(--paired); shift ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$LB" ] || die "--llama-bench PATH is required (build llama.cpp yourself)"
[ -x "$LB" ] || die "$LB is not an executable"
[ -x "$XC" ] || die "$XC is not an executable (build xcpipe first)"
for v in "$ROUNDS" "$REPS" "$PP" "$TG" "$VOCAB" "$LAYERS"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "counts must be positive integers (got '$v')"
done
[[ "$WEIGHTS" =~ ^(bf16|f16)(,(bf16|f16))*$ ]] || die "--weights takes bf16 and/or f16"
[[ "$THREADS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--threads takes a list of counts"
mkdir -p "$DIR"
raw="$DIR/raw.txt"
: >"$raw"

IFS=, read -r -a wl <<<"$WEIGHTS"
IFS=, read -r -a tl <<<"$THREADS"
for w in "${wl[@]}"; do
    g="$DIR/l$LAYERS-v$VOCAB-$w.gguf"
    if [ ! -s "$g" ]; then
        "$PY" -c 'import gguf, numpy' 2>/dev/null || die "$PY lacks the gguf package (pip install gguf)"
        echo "writing $g ..." >&2
        "$PY" "$here/make_gguf.py" "$g.tmp" --weights "$w" --layers "$LAYERS" --vocab "$VOCAB"
        mv "$g.tmp" "$g"
    fi
done

for r in $(seq 1 "$ROUNDS"); do
    for w in "${wl[@]}"; do
        if [ -n "$LOCK" ]; then
            exec 9>>"$LOCK"
            flock 9
            echo "round $r: $w: holding $LOCK; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        fi
        for t in "${tl[@]}"; do
            echo "round $r: $w, $t thread(s): llama-bench ..." >&2
            "$LB" -m "$DIR/l$LAYERS-v$VOCAB-$w.gguf" -p "$PP" -n "$TG" -t "$t" -r "$REPS" -o jsonl \
                2>/dev/null | sed "s/^/LB $r $w $t /" >>"$raw"
            echo "round $r: $w, $t thread(s): xcpipe bench model ..." >&2
            "$XC" bench model --weights "$w" --layers "$LAYERS" --vocab "$VOCAB" --threads "$t" \
                --pp "$PP" --tg "$TG" --reps "$REPS" --dir "$DIR/xc-l$LAYERS-v$VOCAB-$w" \
                ${PAIRED[@]+"${PAIRED[@]}"} 2>/dev/null |
                sed "s/^/XC $r $w $t /" >>"$raw"
        done
        if [ -n "$LOCK" ]; then
            echo "round $r: $w: releasing $LOCK; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
            flock -u 9
            exec 9>&-
        fi
    done
done

"$PY" - "$raw" "$PP" "$TG" <<'PY'
import json, re, statistics, sys
raw, pp, tg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {}  # (side, w, t, kind) -> [per-round best]
bw = {}
share = {}  # (w, t, round) -> bytes per token, read bandwidth; llama.cpp's tg of that round
lb_tg = {}
lb_pp = {}
fma = {}  # (w, t, round) -> FLOPs per prompt token, FMA peak (xcpipe's pp line)
rr = {}  # (w, t, round, kind) -> {"XC": tok/s, "LB": tok/s}: the per-round ratios
paired = {}  # (w, t) -> per round: xcpipe's decode against the reads between its own steps
for line in open(raw):
    side, r, w, t, rest = line.rstrip("\n").split(" ", 4)
    if side == "LB":
        try:
            j = json.loads(rest)
        except ValueError:
            continue
        kind = "pp" if j.get("n_prompt", 0) > 0 and j.get("n_gen", 0) == 0 else "tg"
        best = max(j.get("samples_ts") or [j["avg_ts"]])
        res.setdefault(("LB", w, t, kind), []).append(best)
        rr.setdefault((w, t, r, kind), {})["LB"] = best
        if kind == "tg":
            lb_tg[(w, t, r)] = best
        else:
            lb_pp[(w, t, r)] = best
    else:
        f = rest.split()
        if f and f[0] == f"tg{tg}-p" and len(f) >= 8:
            # "tg128-p T tok/s ms GB/s NN% of REF (paired: ...)"
            paired.setdefault((w, t), []).append(f"{f[4]} GB/s, {f[5]} of {f[7]}")
        m = re.search(r"\(compute: ([0-9.]+) GFLOP/s, [0-9]+% of the FMA peak ([0-9.]+)\)", rest)
        if f and f[0] == f"pp{pp}" and m and float(f[2]) > 0:
            # "pp512 T tok/s ms (compute: G GFLOP/s, NN% of the FMA peak P)"
            fma[(w, t, r)] = (float(m.group(1)) / float(f[2]), float(m.group(2)))
        if f and f[0] in (f"pp{pp}", f"tg{tg}") and len(f) >= 3:
            res.setdefault(("XC", w, t, f[0][:2]), []).append(float(f[2]))
            rr.setdefault((w, t, r, f[0][:2]), {})["XC"] = float(f[2])
            if f[0].startswith("tg") and len(f) >= 7:
                bw.setdefault((w, t), []).append(f[4] + " GB/s, " + " ".join(f[5:]))
                # bytes per token (weights + KV) from xcpipe's own figures, and the read
                # bandwidth measured in the same run: "tg64 T tok/s ms GB/s NN% of BW"
                try:
                    share.setdefault((w, t, r), {})["bpt"] = float(f[4]) / float(f[2])
                    share[(w, t, r)]["bw"] = float(f[-1])
                except (ValueError, ZeroDivisionError):
                    pass
print(f"| weights | threads | xcpipe pp{pp} | llama.cpp pp{pp} | ratio | xcpipe tg{tg} | llama.cpp tg{tg} | ratio |")
print("|---|---|---|---|---|---|---|---|")
keys = sorted({(k[1], k[2]) for k in res}, key=lambda k: (k[0], int(k[1])))
def med(v):
    return statistics.median(v) if v else float("nan")
for w, t in keys:
    xp, lp = med(res.get(("XC", w, t, "pp"), [])), med(res.get(("LB", w, t, "pp"), []))
    xt, lt = med(res.get(("XC", w, t, "tg"), [])), med(res.get(("LB", w, t, "tg"), []))
    print(f"| {w} | {t} | {xp:.1f} | {lp:.1f} | {xp / lp:.2f} | {xt:.2f} | {lt:.2f} | {xt / lt:.2f} |")
# per-round ratios (pp; tg), the rounds in order, to show whether a median holds in every round
for w, t in keys:
    parts = []
    for kind in ("pp", "tg"):
        v = [d["XC"] / d["LB"] for (w2, t2, r2, k2), d in sorted(rr.items(), key=lambda i: int(i[0][2]))
             if (w2, t2, k2) == (w, t, kind) and "XC" in d and "LB" in d and d["LB"] > 0]
        parts.append(" ".join(f"{x:.2f}" for x in v))
    print(f"ratios per round, {w} {t} thread(s) (pp; tg): " + "; ".join(parts))
for (w, t), v in sorted(bw.items()):
    print(f"xcpipe decode {w} {t} thread(s), GB/s and share of the read bandwidth per round: " + "; ".join(v))
for (w, t), v in sorted(paired.items()):
    print(f"xcpipe decode {w} {t} thread(s), paired (a read after every step), GB/s and share of those reads per round: " + "; ".join(v))
# llama.cpp's own share: its tg tokens/s times the bytes a token reads (the same shapes; xcpipe's
# bytes per token, weights plus the f32 KV it reads), over the bandwidth xcpipe measured in
# that round
lbs = {}
for (w, t, r), d in sorted(share.items()):
    if (w, t, r) in lb_tg and "bw" in d and d["bw"] > 0:
        g = lb_tg[(w, t, r)] * d["bpt"]
        lbs.setdefault((w, t), []).append(f"{g:.1f} GB/s, {100 * g / d['bw']:.0f}% of {d['bw']:.1f}")
for (w, t), v in sorted(lbs.items()):
    print(f"llama.cpp decode {w} {t} thread(s), GB/s and share of the same read bandwidth per round: " + "; ".join(v))
# prefill against the FMA peak xcpipe measured in the same run (best of passes around its
# prefill repetitions). FLOPs per prompt token: xcpipe's from its pp line; llama.cpp runs the same
# graph except that its last layer takes every row (not the last one alone) through attention
# and wo before it keeps the last row for the FFN: that much more (bench model's hidden width)
HIDDEN = 4096
lb_extra = (2 * HIDDEN * HIDDEN * (pp - 1) + 2 * HIDDEN * pp * (pp + 1) - 4 * HIDDEN * pp) / pp / 1e9  # GFLOP per token
cmp = {}
for (w, t, r), (fpt, peak) in sorted(fma.items(), key=lambda i: (i[0][0], int(i[0][1]), int(i[0][2]))):
    for side, tps, f in (("xcpipe", dict(rr.get((w, t, r, "pp"), {})).get("XC"), fpt),
                         ("llama.cpp", lb_pp.get((w, t, r)), fpt + lb_extra)):
        if tps:
            g = tps * f
            cmp.setdefault((side, w, t), []).append(f"{g:.1f} GFLOP/s, {100 * g / peak:.0f}% of {peak:.1f}")
for (side, w, t), v in sorted(cmp.items(), key=lambda i: (i[0][1], int(i[0][2]), i[0][0] != "xcpipe")):
    print(f"{side} prefill {w} {t} thread(s), GFLOP/s and share of the FMA peak per round: " + "; ".join(v))
PY
