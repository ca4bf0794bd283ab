#!/usr/bin/env bash
# The trained shapes model (models/shapes) end to end: `xcpipe eval shapes` through a 2-stage
# local cluster (PNG decoding, preprocessing, CLIP, projector, PLoRA on image rows, the pipeline,
# greedy sampling, the HTTP API) answers held-out questions at least as well as the committed
# model was measured to (MIN_ACC; random weights or a broken path score near 0), and its greedy
# answers to the 50 questions of tests/fixtures/shapes/reference_answers.jsonl are identical to
# the original PyTorch code's (tools/train/reference_answers.py), through 1, 2 and 3 stages over
# ZeroMQ (ipc and tcp) and, when MPI is built, 1, 2 and 3 stages under mpirun.
#   eval_shapes.sh XCPIPE [MPIEXEC|none]
set -euo pipefail
XCPIPE=$1 MPIEXEC=${2:-none}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
M=$ROOT/models/shapes
REF=$ROOT/tests/fixtures/shapes/reference_answers.jsonl
T=$(mktemp -d /tmp/xc-eval-XXXXXX)
MPIPID=
cleanup() {
  [ -n "$MPIPID" ] && kill -TERM "$MPIPID" 2> /dev/null && sleep 1 && kill -9 "$MPIPID" 2> /dev/null
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "eval_shapes.sh: $*" >&2; for f in "$T"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }; done; exit 1; }
N=$(grep -c . "$REF")
# the accuracy the committed model reaches on these 35 questions, with a margin (models/shapes/README.md)
MIN_ACC=0.8

# 1. accuracy on a few dozen held-out questions (5 of each type), 2 stages
timeout 120 "$XCPIPE" eval shapes --model "$M" --stages 2 --count 35 --seed 1000000100 \
  --min-accuracy "$MIN_ACC" --serve-arg=--threads --serve-arg=1 > "$T/acc.txt" 2> "$T/acc.log" ||
  { cat "$T/acc.txt" >&2; fail "accuracy below $MIN_ACC (or the run failed)"; }
cat "$T/acc.txt"

# 2. the original code's greedy answers, through 1, 2, 3 stages (ipc) and 2 stages over tcp
for st in 1 2 3; do
  timeout 120 "$XCPIPE" eval shapes --model "$M" --stages "$st" --count "$N" --expect "$REF" \
    --serve-arg=--threads --serve-arg=1 > "$T/exp$st.txt" 2> "$T/exp$st.log" ||
    fail "$st stage(s): answers differ from the PyTorch reference"
  grep -q "$N of $N identical" "$T/exp$st.txt" || fail "$st stage(s): $(tail -1 "$T/exp$st.txt")"
  echo "$st stage(s) over ipc: $N answers identical to the original PyTorch code's"
done
timeout 120 "$XCPIPE" eval shapes --model "$M" --stages 2 --count "$N" --expect "$REF" \
  --serve-arg=--threads --serve-arg=1 --serve-arg=--transport --serve-arg=tcp > "$T/tcp.txt" \
  2> "$T/tcp.log" || fail "2 stages over tcp: answers differ from the PyTorch reference"
echo "2 stages over tcp: $N answers identical"

# 3. under mpirun: rank 0 coordinator + HTTP, rank 1 vision, then the stages (1, 2 and 3)
if [ "$MPIEXEC" != none ]; then
  for st in 1 2 3; do
    port=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768-)
    timeout 150 "$MPIEXEC" --allow-run-as-root --oversubscribe -np $((st + 2)) "$XCPIPE" serve \
      --transport mpi --model "$M" --stages "$st" --threads 1 --host 127.0.0.1 --port "$port" \
      > "$T/mpi$st.log" 2>&1 &
    MPIPID=$!
    for _ in $(seq 1 600); do
      curl -sf "http://127.0.0.1:$port/ready" > /dev/null 2>&1 && break
      kill -0 "$MPIPID" 2> /dev/null || fail "mpirun xcpipe serve ($st stages) exited"
      sleep 0.1
    done
    timeout 120 "$XCPIPE" eval shapes --endpoint "http://127.0.0.1:$port" --count "$N" \
      --expect "$REF" > "$T/mpi$st.txt" 2> "$T/mpi_eval$st.log" ||
      fail "under mpirun, $st stage(s): answers differ from the PyTorch reference"
    kill -TERM "$MPIPID" 2> /dev/null || true
    for _ in $(seq 1 200); do kill -0 "$MPIPID" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$MPIPID" 2> /dev/null || true
    wait "$MPIPID" 2> /dev/null || true
    MPIPID=
    echo "$st stage(s) under mpirun: $N answers identical"
  done
fi
