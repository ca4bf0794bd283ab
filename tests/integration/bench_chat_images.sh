#!/usr/bin/env bash
# xcpipe bench serve --scenario chat-images end to end (issue 13): scripts/bench-chat-images
# serves the tiny model twice (with the prefix cache and with --no-prefix-cache) and runs the
# benchmark client against both. Checked: exit 0, every answer identical with the cache on and
# off, fewer prompt rows computed with the cache, a TTFT line per turn. The client keeps one
# HTTP/1.1 connection per conversation across its turns and reads the chunked SSE bodies, so this
# also runs that path (a body it misread would fail the JSON checks or differ). No timing is
# checked. usage: bench_chat_images.sh XCPIPE
XCPIPE=$1
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$HERE/../fixtures
T=$(mktemp -d /tmp/xc-bci-test-XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() {
  echo "bench_chat_images: $*" >&2
  exit 1
}
"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
IMGS="$FIX/image/src/jpg_420_q90_640x480.jpg,$FIX/image/src/jpg_tiny_3x7.jpg"
XCPIPE="$XCPIPE" timeout 100 "$HERE/../../scripts/bench-chat-images" "$T/m" "$IMGS" \
  --conversations 2 --turns 3 --max-tokens 8 > "$T/out.txt" 2>&1 ||
  fail "exit status $?: $(tail -20 "$T/out.txt")"
cat "$T/out.txt"
grep -q "^answers identical with the cache on and off: yes (6 of 6)" "$T/out.txt" ||
  fail "the answers differ"
read -r on off < <(sed -n \
  's/^prompt rows computed: \([0-9]*\) with the cache.*, \([0-9]*\) without.*/\1 \2/p' "$T/out.txt")
if ! { [ -n "$on" ] && [ -n "$off" ] && [ "$on" -lt "$off" ]; }; then
  fail "prompt rows computed with the cache ($on) not below those without ($off)"
fi
for t in 1 2 3; do
  grep -Eq "^$t +[0-9.]+ ms +[0-9.]+ ms +[0-9.]+x" "$T/out.txt" || fail "no TTFT line for turn $t"
done
echo "bench_chat_images: all checks passed"
