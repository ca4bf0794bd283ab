#!/bin/bash
# The coordinator and the workers meet only over the wire (issue 12 item 9): the coordinator binary
# links input/ (images, sampling parameters) but no worker code. Checked on the symbols it defines.
set -euo pipefail
coord=$1
worker=$2
syms=$(nm --defined-only "$coord" | awk '{print $3}')
# every function defined in worker/*.c: none of them may be in the coordinator
wsyms=$(nm --defined-only "$worker" | awk '$2 == "T" {print $3}' | grep -E '^xc_(llm|vision|kv|engine|sampler|ckpt|tiny|worker|sim|pickle|zip|safetensors|cgroup)_' || true)
[ -n "$wsyms" ] || { echo "FAIL: no worker symbols found in $worker"; exit 1; }
bad=$(comm -12 <(sort -u <<<"$syms") <(sort -u <<<"$wsyms") || true)
if [ -n "$bad" ]; then
    echo "FAIL: the coordinator defines worker functions:"; echo "$bad" | head; exit 1
fi
for s in xc_image_decode xc_sampling_validate; do
    grep -qx "$s" <<<"$syms" || { echo "FAIL: $s (input/) missing from the coordinator"; exit 1; }
done
echo "ok: coordinator has xc_image_*/xc_sampling_* from input/ and none of $(wc -l <<<"$wsyms") worker functions"
