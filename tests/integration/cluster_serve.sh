#!/usr/bin/env bash
# Launch modes: `xcpipe serve` (coordinator here, vision + decoder workers as child processes
# over ipc) with 2 stages, and `mpirun -np 4 xcpipe serve --transport mpi` (rank 0 coordinator,
# then vision, then 2 stages) give the tokens of single-process `xcpipe generate` for the 8
# mixed concurrent requests, exit 0 and leave no process behind.
XCPIPE=$1 MPIEXEC=${2:-none}
WORKER=unused COORD=unused
source "$(dirname "$0")/cluster_lib.sh"
make_model
write_requests "$T/req.txt"
reference "$T/req.txt" "$T/want.txt"
[ "$(grep -c ' ok [0-9]' "$T/want.txt")" = 8 ] || fail "reference generation failed"

timeout 60 "$XCPIPE" serve --model "$T/m" --stages 2 --threads 1 --chunk 5 \
  --requests "$T/req.txt" --exit-when-done > "$T/got.txt" 2> "$T/serve.log" &
spid=$!
wait $spid || fail "xcpipe serve failed"
diff <(sort "$T/want.txt") <(sort "$T/got.txt") || fail "serve (local, 2 stages): tokens differ"
[ "$(grep -c "worker w[0-9] ready" "$T/serve.log")" = 3 ] || fail "serve did not start 3 workers"
pgrep -f "/tmp/xcpipe-$spid/" > /dev/null && fail "serve left workers behind"
[ -e "/tmp/xcpipe-$spid" ] && fail "serve left /tmp/xcpipe-$spid behind"
echo "serve, 2 local stages over ipc: 8 requests identical"

if [ "$MPIEXEC" != none ]; then
  timeout 90 "$MPIEXEC" --allow-run-as-root --oversubscribe -np 4 "$XCPIPE" serve \
    --transport mpi --model "$T/m" --stages 2 --threads 1 --chunk 5 --requests "$T/req.txt" \
    --exit-when-done > "$T/got_mpi.txt" 2> "$T/mpi.log" || fail "mpirun xcpipe serve failed"
  diff <(sort "$T/want.txt") <(sort "$T/got_mpi.txt") || fail "serve under mpirun: tokens differ"
  echo "mpirun -np 4 (coordinator, vision, 2 stages): 8 requests identical"
fi
