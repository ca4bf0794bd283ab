#!/usr/bin/env bash
# The PLoRA ablation table of docs/model.md: `xcpipe eval shapes` on models/shapes through a
# 2-stage local cluster with the adapters on image rows (XC_PLORA=image, the model as defined),
# off, and on every row, printed as a markdown table.
#   tools/train/ablation.sh [XCPIPE] [COUNT]     (defaults: build/bin/xcpipe, 700 = 100 per type)
set -euo pipefail
cd "$(dirname "$0")/../.."
XCPIPE=${1:-build/bin/xcpipe} COUNT=${2:-700}
T=$(mktemp -d /tmp/xc-ablation-XXXXXX)
trap 'rm -rf "$T"' EXIT
for mode in image off all; do
  XC_PLORA=$mode "$XCPIPE" eval shapes --model models/shapes --stages 2 --count "$COUNT" \
    --serve-arg=--threads --serve-arg=1 > "$T/$mode.txt"
done
python3 - "$T" <<'PY'
import sys
rows = {}
for mode in ("image", "off", "all"):
    for line in open(f"{sys.argv[1]}/{mode}.txt"):
        f = line.split()
        if len(f) == 3 and f[2].endswith("%"):
            rows.setdefault(f[0], {})[mode] = (f[1], f[2])
print("| question type | PLoRA on image rows (`XC_PLORA=image`, as trained) | no PLoRA (`off`) | PLoRA on every row (`all`) |")
print("|---|---|---|---|")
for t, v in rows.items():
    print(f"| {t} | " + " | ".join(f"{v[m][1]} ({v[m][0]})" for m in ("image", "off", "all")) + " |")
PY
