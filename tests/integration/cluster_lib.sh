# Helpers for the cluster integration tests (sourced): a tiny model, pixel files, reference
# tokens from single-process `xcpipe generate`, and process bookkeeping with hard timeouts.
set -euo pipefail
XCPIPE=${XCPIPE:?}
WORKER=${WORKER:?}
COORD=${COORD:?}
T=$(mktemp -d /tmp/xc-cl-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
forget() { # forget PID: a process known to be gone leaves PIDS (its number may be reused)
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
fail() { echo "$(basename "$0"): $*" >&2; for f in "$T"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -15 "$f" >&2; }; done; exit 1; }

make_model() { # 4 layers so that 1, 2 and 3 stages all hold layers; 16 image tokens
  "$XCPIPE" model make-tiny --out "$T/m" --layers 4 --seed 7 --tokenizer none > /dev/null
  perl -e 'srand(1); for $i (0,1) { open(F, ">", "'"$T"'/p$i.f32"); binmode F;
           print F pack("f<*", map { rand(4) - 2 } 1 .. 3*56*56); close F }'
}

# The request set: text-only and two-image prompts, greedy and seeded sampling.
write_requests() {
  local f=$1
  : > "$f"
  echo "t1 ids=1,17,33,99,4,250,12,8,8,3 max=12 greedy=1" >> "$f"
  echo "i2 ids=1,5,9,img,23,44,img,7,8 pixels=$T/p0.f32,$T/p1.f32 max=12 greedy=1" >> "$f"
  echo "t3 ids=$(seq -s, 3 2 141) max=10 greedy=1" >> "$f"
  echo "i4 ids=img,300,301,img pixels=$T/p1.f32,$T/p0.f32 max=9 greedy=1" >> "$f"
  echo "s5 ids=1,2,3,4,5 max=10 seed=11" >> "$f"
  echo "s6 ids=9,8,7 max=8 seed=3 temp=0.7 top_k=20 top_p=0.9 rep=1.1" >> "$f"
  echo "t7 ids=400,401,402 max=7 greedy=1" >> "$f"
  echo "i8 ids=2,img,4 pixels=$T/p0.f32 max=11 seed=5" >> "$f"
}

# Expected answers from single-process generation, in request order.
reference() {
  local f=$1 out=$2
  : > "$out"
  while read -r name rest; do
    local ids="" px=() max=16 greedy=0 seed=0 temp=1 topk=50 topp=0.8 rep=1.005
    for kv in $rest; do
      case $kv in
        ids=*) ids=${kv#ids=} ;;
        pixels=*) IFS=, read -r -a pp <<< "${kv#pixels=}"; for p in "${pp[@]}"; do px+=(--pixels "$p"); done ;;
        max=*) max=${kv#max=} ;; greedy=*) greedy=${kv#greedy=} ;; seed=*) seed=${kv#seed=} ;;
        temp=*) temp=${kv#temp=} ;; top_k=*) topk=${kv#top_k=} ;; top_p=*) topp=${kv#top_p=} ;;
        rep=*) rep=${kv#rep=} ;;
      esac
    done
    local g=()
    [ "$greedy" = 1 ] && g=(--greedy)
    local toks
    toks=$("$XCPIPE" generate --model "$T/m" --input-ids "$ids" "${px[@]}" "${g[@]}" \
      --max-tokens "$max" --seed "$seed" --temperature "$temp" --top-k "$topk" --top-p "$topp" \
      --repetition-penalty "$rep" --threads 1 2>/dev/null)
    echo "$name ok $toks" >> "$out"
  done < "$f"
}

# start_workers N ENDPOINT PREFIX [extra flags]: N workers registering at ENDPOINT
start_workers() {
  local n=$1 ep=$2 pre=$3; shift 3
  for ((i = 0; i < n; i++)); do
    local own="tcp://127.0.0.1:*"
    [[ $ep == ipc://* ]] && own="ipc://$T/$pre$i.sock"
    "$WORKER" --coordinator "$ep" --endpoint "$own" --id "$pre$i" --threads 1 "$@" \
      2> "$T/$pre$i.log" &
    PIDS+=($!)
  done
}

# A TCP port for a listener: below the kernel's ephemeral range (32768-60999 here; outgoing
# connections of this or a parallel test take ports from there), not listening now, and not
# handed out before in this test.
free_port() {
  local p i
  for i in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    grep -qx "$p" "$T/.ports" 2>/dev/null && continue
    (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null && continue
    echo "$p" >> "$T/.ports"
    echo "$p"
    return 0
  done
  echo "free_port: no free port found" >&2
  return 1
}
