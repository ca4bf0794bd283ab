#!/usr/bin/env bash
# Failure handling with real processes: a decoder worker killed with SIGKILL mid-generation is
# noticed within the dead timeout, every in-flight request is queued to resume (the log names the
# lost worker) and, with no replica left and no spare, ends with a retryable error after
# --resume-timeout (1.5 s); readiness turns false, nothing hangs; a restarted worker re-registers,
# takes the vacant stage, and new requests succeed with tokens identical to single-process. Then garbage,
# truncated and wrong-version frames sent to a worker and to the coordinator are rejected and
# logged, and both keep serving. SIGTERM on the coordinator exits 0 and stops the workers.
XCPIPE=$1 WORKER=$2 COORD=$3 GARBAGE=$4
source "$(dirname "$0")/cluster_lib.sh"
make_model
echo "t1 ids=1,17,33,99,4,250,12,8,8,3 max=12 greedy=1" > "$T/one.txt"
reference "$T/one.txt" "$T/want.txt"
ep="tcp://127.0.0.1:$(free_port)"
mkfifo "$T/in"
start_workers 3 "$ep" w --heartbeat 0.2
"$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --dead-timeout 1 --resume-timeout 1.5 --shutdown-workers --requests "$T/in" \
  > "$T/out.txt" 2> "$T/coord.log" &
CPID=$!
PIDS+=($CPID)
exec 3> "$T/in"
MARK=0 # wait_line looks only at answers after line MARK (set with mark)
mark() { MARK=$(wc -l < "$T/out.txt"); }
since() { tail -n +$((MARK + 1)) "$T/out.txt"; }
wait_line() { # wait_line PATTERN SECONDS
  local end=$((SECONDS + $2))
  until since | grep -q -- "$1"; do
    [ $SECONDS -lt $end ] || fail "no '$1' within $2 s: $(cat "$T/out.txt")"
    sleep 0.1
  done
}
echo "#wait-ready 20" >&3
wait_line "#ready 1" 25

# four long generations, then kill stage 1 while they run
for i in 1 2 3 4; do echo "long$i ids=1,2,3,$i max=4000 greedy=1" >&3; done
sleep 0.5
victim=$(sed -n 's/.*assigned worker \(w[0-9]\): decoder replica 0 stage 1 .*/\1/p' "$T/coord.log" | tail -1)
[ -n "$victim" ] || fail "no stage-1 assignment in the log"
vpid=${PIDS[${victim#w}]}
grep -q "^long" "$T/out.txt" && fail "a long request finished before the kill; make them longer"
t0=$(date +%s.%N)
kill -9 "$vpid"
for i in 1 2 3 4; do wait_line "^long$i error" 6; done
t1=$(date +%s.%N)
for i in 1 2 3 4; do
  grep -q "^long$i error XC_ERR_IO retryable no replica could take the request within 1.5 s" "$T/out.txt" \
    || fail "long$i: $(grep "^long$i" "$T/out.txt")"
done
n_res=$(grep -c "resumes (1 of at most 3) after [0-9]* tokens: worker $victim (replica 0 stage 1) lost" "$T/coord.log" || true)
[ "$n_res" = 4 ] || fail "$n_res of 4 requests queued to resume: $(grep resumes "$T/coord.log")"
echo "in-flight requests queued to resume, then failed $(echo "$t1 - $t0" | bc) s after SIGKILL (dead timeout 1 s, resume timeout 1.5 s)"
echo "#ready" >&3
wait_line "#ready 0" 3
echo "t-down ids=1,2 max=3 greedy=1" >&3
wait_line "^t-down error XC_ERR_IO retryable" 3

# restart: a new process takes the vacant stage
"$WORKER" --coordinator "$ep" --id w-new --threads 1 --heartbeat 0.2 2> "$T/w-new.log" &
PIDS+=($!)
mark
echo "#wait-ready 20" >&3
wait_line "#ready 1" 25
grep -q "worker w-new replaces replica 0 stage 1" "$T/coord.log" || fail "w-new did not take stage 1"
cat "$T/one.txt" >&3
wait_line "^t1 " 10
since | grep "^t1 " | diff - "$T/want.txt" || fail "after restart: tokens differ"
echo "after the restart, tokens identical to single-process"

# garbage at a worker (stage 0) and at the coordinator
s0=$(sed -n 's/.*assigned worker \(w[-a-z0-9]*\): decoder replica 0 stage 0 .*/\1/p' "$T/coord.log" | tail -1)
s0ep=$(sed -n "s/.*worker $s0 registered (\([^,]*\),.*/\1/p" "$T/coord.log" | tail -1)
timeout 20 "$GARBAGE" "$s0ep" || fail "garbage sender failed on $s0ep"
timeout 20 "$GARBAGE" "$ep" || fail "garbage sender failed on $ep"
sleep 0.5
n_w=$(grep -c "dropped a bad message\|micro-batch .* failed" "$T/$s0.log" || true)
n_c=$(grep -c "dropped a bad message" "$T/coord.log" || true)
[ "$n_w" -ge 3 ] || fail "worker logged $n_w rejections"
[ "$n_c" -ge 3 ] || fail "coordinator logged $n_c rejections"
echo "worker rejected $n_w bad frames, coordinator $n_c"
mark
echo "#wait-ready 20" >&3
cat "$T/one.txt" >&3
wait_line "^t1 " 20
since | grep "^t1 " | diff - "$T/want.txt" || fail "after garbage: tokens differ"
echo "after the garbage, tokens identical to single-process"

# clean shutdown on SIGTERM
kill -TERM "$CPID"
timeout 15 tail --pid="$CPID" -f /dev/null || fail "coordinator did not exit on SIGTERM"
wait "$CPID"; rc=$?
[ $rc = 0 ] || fail "coordinator exit code $rc after SIGTERM"
exec 3>&-
for p in "${PIDS[@]}"; do
  [ "$p" = "$vpid" ] && continue
  timeout 10 tail --pid="$p" -f /dev/null || fail "worker $p did not exit after the coordinator"
done
echo "SIGTERM: coordinator exit 0, workers stopped"
