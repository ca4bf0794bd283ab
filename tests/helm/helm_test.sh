#!/usr/bin/env bash
# The chart tests (ctest names helm_*). Fetches helm and the validators first (scripts/helm-tools,
# cached in .tools/), and fails if they cannot be had: these tests never skip.
#   helm_test.sh lint                 helm lint --strict over the default values and every ci/ set;
#                                     yamllint --strict of the values files
#   helm_test.sh template             render + yamllint + Kubernetes schema validation (offline) +
#                                     shape checks, for the default values and every ci/ set
#   helm_test.sh schema               every file in bad-values/ is refused by values.schema.json
#                                     with the error its first line names; the good sets pass
#   helm_test.sh env BINDIR           every XC_* variable and flag the chart sets is one the
#                                     binary of that container reads (its --help, docs/protocol.md)
#   helm_test.sh wiring BINDIR [curve] the chart's processes run locally and answer a chat request
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=${XC_TOOLS_DIR:-$ROOT/.tools}
CHART=$ROOT/helm/xcpipe
bash "$ROOT/scripts/helm-tools"
HELM=$TOOLS/helm/helm
PY=$TOOLS/venv/bin/python
command -v yamllint > /dev/null || { echo "helm_test.sh: yamllint missing (scripts/deps)" >&2; exit 1; }

SETS=("default:")
for f in "$CHART"/ci/*-values.yaml; do SETS+=("$(basename "$f" -values.yaml):$f"); done
[ "${#SETS[@]}" -ge 4 ] || { echo "helm_test.sh: want the default values and at least three ci/ sets" >&2; exit 1; }

mode=${1:?mode}
case $mode in
lint)
  for s in "${SETS[@]}"; do
    name=${s%%:*} f=${s#*:}
    out=$("$HELM" lint --strict "$CHART" ${f:+-f "$f"} 2>&1) || { echo "$out" >&2; echo "helm lint $name: FAILED" >&2; exit 1; }
    grep -q "1 chart(s) linted, 0 chart(s) failed" <<< "$out" || { echo "$out" >&2; exit 1; }
    echo "helm lint --strict ($name): ok"
  done
  yamllint --strict -c "$HERE/yamllint.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml "$HERE"/bad-values/*.yaml "$HERE"/wiring-values.yaml
  echo "yamllint values files: ok"
  ;;
template)
  for s in "${SETS[@]}"; do
    "$PY" "$HERE/validate.py" "$HELM" "$CHART" "${s%%:*}" ${s#*:}
  done
  ;;
schema)
  n=0
  for f in "$HERE"/bad-values/*.yaml; do
    want=$(sed -n '1s/^# expect: //p' "$f")
    [ -n "$want" ] || { echo "$f: first line must be '# expect: TEXT'" >&2; exit 1; }
    if out=$("$HELM" template rel "$CHART" -f "$f" 2>&1 > /dev/null); then
      echo "helm_test.sh: $f was accepted; the schema must refuse it" >&2; exit 1
    fi
    grep -q "values don't meet the specifications of the schema" <<< "$out" \
      || { echo "$out" >&2; echo "helm_test.sh: $f failed, but not in the values schema" >&2; exit 1; }
    grep -qF -- "$want" <<< "$out" || { echo "$out" >&2; echo "helm_test.sh: $f: error does not name '$want'" >&2; exit 1; }
    echo "refused as expected: $(basename "$f") ($(grep -m1 -F -- "$want" <<< "$out" | sed 's/^- //'))"
    n=$((n + 1))
  done
  for s in "${SETS[@]}"; do
    f=${s#*:}
    "$HELM" template rel "$CHART" ${f:+-f "$f"} > /dev/null
  done
  echo "schema: $n bad value files refused, ${#SETS[@]} good sets accepted"
  ;;
env)
  BIN=${2:?bindir}
  for s in "${SETS[@]}"; do
    "$PY" "$HERE/env_check.py" "$HELM" "$CHART" "$BIN" "$ROOT/docs/protocol.md" "${s%%:*}" ${s#*:}
  done
  ;;
wiring)
  BIN=${2:?bindir}
  "$PY" "$HERE/wiring.py" --helm "$HELM" --chart "$CHART" --bin "$BIN" --values "$HERE/wiring-values.yaml" ${3:+--$3}
  ;;
*)
  echo "helm_test.sh: unknown mode $mode" >&2; exit 2 ;;
esac
