#!/usr/bin/env bash
# API key rotation without a restart (docs/deploy.md "Rotating keys"): SIGHUP makes the
# coordinator read --api-key-file again, through xcpipe-coordinator's loop and xcpipe serve's.
# A new file (replaced the way kubelet updates a Secret volume: a new file renamed over the old)
# turns the new key on and the old one off; an empty or missing file is refused and the keys in
# use stay; --api-keys keys survive every reload; the process never dies of SIGHUP.
XCPIPE=$1 COORD=$2
WORKER=unused
source "$(dirname "$0")/cluster_lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures" && pwd)
"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"

code() { # code KEY: HTTP status of GET /v1/models with that key ("" = none)
  local h=()
  [ -n "$1" ] && h=(-H "Authorization: Bearer $1")
  curl -s -o /dev/null -w '%{http_code}' "${h[@]}" "http://127.0.0.1:$port/v1/models"
}
expect() { # expect KEY STATUS WHAT
  local got
  got=$(code "$1")
  [ "$got" = "$2" ] || fail "$3: key '${1:-none}' got $got, want $2"
}
put_keys() { # put_keys TEXT: a new file renamed over the key file
  printf '%b' "$1" > "$T/keys.new"
  mv "$T/keys.new" "$T/keys"
}
hup() { # hup LOG: SIGHUP, then wait for the reload's log line
  local n
  n=$(grep -c "API keys" "$1" || true)
  kill -HUP "$PID"
  local end=$((SECONDS + 5))
  until [ "$(grep -c "API keys" "$1" || true)" -gt "$n" ]; do
    [ $SECONDS -lt $end ] || fail "no reload logged after SIGHUP"
    kill -0 "$PID" 2> /dev/null || fail "SIGHUP killed the process"
    sleep 0.05
  done
}

check_rotation() { # check_rotation LOG WHAT
  local log=$1 what=$2
  local end=$((SECONDS + 10))
  until [ "$(code sk-old-key-1)" = 200 ]; do
    [ $SECONDS -lt $end ] || fail "$what: the HTTP API did not come up"
    sleep 0.1
  done
  expect "" 401 "$what, start"
  expect sk-new-key-2 401 "$what, start"
  expect sk-fixed-key 200 "$what, start"
  put_keys "# rotated\nsk-new-key-2\nsk-old-key-1\n"
  hup "$log"
  expect sk-new-key-2 200 "$what, both keys"
  expect sk-old-key-1 200 "$what, both keys"
  put_keys "sk-new-key-2\n"
  hup "$log"
  expect sk-new-key-2 200 "$what, new key only"
  expect sk-old-key-1 401 "$what, new key only"
  expect sk-fixed-key 200 "$what, --api-keys key after reloads"
  grep -q "API keys reloaded from $T/keys: 2 key(s)" "$log" || fail "$what: reload not logged"
  put_keys "# nothing\n\n"
  hup "$log"
  grep -q "API keys not reloaded.*has no keys" "$log" || fail "$what: an empty file was not refused"
  expect sk-new-key-2 200 "$what, after an empty file"
  rm -f "$T/keys"
  hup "$log"
  grep -q "API keys not reloaded.*cannot read --api-key-file" "$log" || fail "$what: a missing file was not refused"
  expect sk-new-key-2 200 "$what, after a missing file"
  expect "" 401 "$what, after a missing file"
  kill -TERM "$PID"
  timeout 15 tail --pid="$PID" -f /dev/null || fail "$what: no exit on SIGTERM"
  wait "$PID" || fail "$what: exit status $? after SIGTERM"
  echo "$what: SIGHUP rotated the keys (add, remove), refused an empty and a missing file"
}

# xcpipe-coordinator (no workers needed for /v1/models)
port=$(free_port)
put_keys "sk-old-key-1\n"
"$COORD" --model "$T/m" --endpoint "tcp://127.0.0.1:$(free_port)" --port "$port" \
  --api-keys sk-fixed-key --api-key-file "$T/keys" 2> "$T/coord.log" &
PID=$!
PIDS+=($PID)
check_rotation "$T/coord.log" "xcpipe-coordinator"

# xcpipe serve (its own supervision loop)
port=$(free_port)
put_keys "sk-old-key-1\n"
"$XCPIPE" serve --model "$T/m" --stages 1 --threads 1 --port "$port" \
  --api-keys sk-fixed-key --api-key-file "$T/keys" 2> "$T/serve.log" &
PID=$!
PIDS+=($PID)
check_rotation "$T/serve.log" "xcpipe serve"
