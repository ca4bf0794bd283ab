#!/usr/bin/env bash
# xcpipe model make-tiny and inspect as processes: the inspect output lists every tensor and the
# parameter counts per component, whose total matches what make-tiny reported; bad flags and
# unreadable checkpoints fail with one line and the documented exit codes.
set -euo pipefail
XCPIPE=${1:?usage: tiny_cli.sh path/to/xcpipe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "tiny_cli: $*" >&2; exit 1; }

for fmt in safetensors bin; do
  out=$("$XCPIPE" model make-tiny --out "$T/m_$fmt" --format "$fmt" --seed 3 --shards 2)
  params=$(sed -n 's/.* tensors, \([0-9]*\) parameters.*/\1/p' <<<"$out")
  [ -n "$params" ] || fail "make-tiny printed no parameter count: $out"
  "$XCPIPE" model inspect "$T/m_$fmt" > "$T/inspect_$fmt.txt"
  for comp in "vision tower" "projector" "token embeddings" "decoder base weights" "PLoRA" \
              "norms" "output head" "total"; do
    grep -q "^$comp " "$T/inspect_$fmt.txt" || fail "inspect ($fmt) lacks the '$comp' line"
  done
  total=$(awk '$1 == "total" {print $2}' "$T/inspect_$fmt.txt")
  [ "$total" = "$params" ] || fail "inspect total $total != make-tiny's $params ($fmt)"
  # the component lines add up to the total, and every tensor line is listed
  sum=$(awk '/^component/ {on=1; next} on && $1 != "total" {s += $(NF-2)} END {print s}' \
        "$T/inspect_$fmt.txt")
  [ "$sum" = "$total" ] || fail "components sum to $sum, total says $total"
  n=$(grep -c '^model.layers.0.attention.wqkv' "$T/inspect_$fmt.txt")
  [ "$n" = 3 ] || fail "expected wqkv + Plora_A + Plora_B of layer 0, found $n lines"
  grep -q '^model.layers.0.attention.wqkv.weight  *bf16  *\[128, 64\]  *16384$' \
    "$T/inspect_$fmt.txt" || fail "wqkv line wrong ($fmt)"
done
# both formats hold the same tensors: the listings are identical but for the header line
diff <(grep -v '^/' "$T/inspect_safetensors.txt") <(grep -v '^/' "$T/inspect_bin.txt") \
  || fail "inspect listings differ between formats"

# --filter counts only the prefix
"$XCPIPE" model inspect "$T/m_bin" --filter vision_proj. --summary > "$T/f.txt"
grep -q '^projector .* 8320 ' "$T/f.txt" || fail "--filter: $(cat "$T/f.txt")"
grep -q '^total .* 8320 ' "$T/f.txt" || fail "--filter total: $(cat "$T/f.txt")"

# errors: one line on stderr, exit 2 for usage, 1 for an unreadable checkpoint
set +e
"$XCPIPE" model make-tiny --out "$T/x" --hidden banana 2> "$T/err"; rc=$?
[ $rc = 2 ] && [ "$(wc -l < "$T/err")" = 1 ] || fail "bad flag: rc $rc, $(cat "$T/err")"
"$XCPIPE" model make-tiny --out "$T/x" --heads 5 2> "$T/err"; rc=$?
[ $rc = 2 ] && grep -q heads "$T/err" || fail "bad heads: rc $rc, $(cat "$T/err")"
"$XCPIPE" model inspect "$T/does-not-exist" 2> "$T/err"; rc=$?
[ $rc = 1 ] && [ "$(wc -l < "$T/err")" = 1 ] || fail "missing dir: rc $rc, $(cat "$T/err")"
head -c 1000 "$T/m_bin/pytorch_model-00001-of-00002.bin" > "$T/trunc.bin"
"$XCPIPE" model inspect "$T/trunc.bin" 2> "$T/err"; rc=$?
[ $rc = 1 ] && [ "$(wc -l < "$T/err")" = 1 ] || fail "truncated: rc $rc, $(cat "$T/err")"
"$XCPIPE" model inspect 2> "$T/err"; rc=$?
[ $rc = 2 ] || fail "no argument: rc $rc"
"$XCPIPE" bench attention --kv-dtype f16 2> "$T/err"; rc=$?
[ $rc = 2 ] && [ "$(wc -l < "$T/err")" = 1 ] || fail "bench attention bad dtype: rc $rc"
set -e
# generate as chat(): --history pairs come before the query in chat()'s template (decoded back
# with the tokenizer), --temperature 0 is --greedy, a bad history file is exit 2
TOKF=$(cd "$(dirname "$0")/../fixtures/tokenizer" && pwd)/tiny.model
"$XCPIPE" model make-tiny --out "$T/mg" --layers 2 --vocab 1000 --seed 3 --tokenizer "$TOKF" \
  > /dev/null
printf '[["old question", "old answer"], ["second <q>", "second a"]]' > "$T/h.json"
"$XCPIPE" generate --model "$T/mg" --prompt "Hi" --history "$T/h.json" --greedy --max-tokens 4 \
  --print-ids --threads 1 > "$T/g1.txt"
sed -n 's/^prompt ids: //p' "$T/g1.txt" | "$XCPIPE" tokenize --tokenizer "$TOKF" --decode \
  > "$T/g1.dec"
grep -qF '[UNUSED_TOKEN_146]user
old question[UNUSED_TOKEN_145]
[UNUSED_TOKEN_146]assistant
old answer[UNUSED_TOKEN_145]
[UNUSED_TOKEN_146]user
second <q>[UNUSED_TOKEN_145]
[UNUSED_TOKEN_146]assistant
second a[UNUSED_TOKEN_145]
[UNUSED_TOKEN_146]user
Hi[UNUSED_TOKEN_145]
[UNUSED_TOKEN_146]assistant' "$T/g1.dec" || fail "--history not in the prompt: $(cat "$T/g1.dec")"
"$XCPIPE" generate --model "$T/mg" --prompt "Hi" --history "$T/h.json" --temperature 0 \
  --max-tokens 4 --print-ids --threads 1 > "$T/g2.txt"
cmp -s "$T/g1.txt" "$T/g2.txt" || fail "--temperature 0 differs from --greedy"
echo '[["only one"]]' > "$T/bad.json"
set +e
"$XCPIPE" generate --model "$T/mg" --prompt "Hi" --history "$T/bad.json" 2> "$T/err"; rc=$?
set -e
[ $rc = 2 ] && grep -q 'history' "$T/err" || fail "bad --history: rc $rc, $(cat "$T/err")"

# bench attention at a small size, both KV dtypes: runs, and its bit-identity check holds
for dt in bf16 f32; do
  "$XCPIPE" bench attention --rows 100 --reps 1 --decode-seqs 3 --kv-dtype $dt --threads 1,2 \
    > "$T/attn.txt" || fail "bench attention ($dt) failed: $(cat "$T/attn.txt")"
  grep -q "equal single-query calls bit for bit" "$T/attn.txt" || fail "bench attention ($dt)"
done
echo "tiny_cli: ok"
