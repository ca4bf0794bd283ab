#!/usr/bin/env bash
# Admission before work (issue 12.5) on a local cluster of the tiny model: api_admission.py sends
# uploads without a key (401 from the headers, RSS flat), over the limit (413 before the body),
# and N concurrent maximal authenticated bodies (peak RSS within the bound of docs/api.md).
# usage: api_admission.sh XCPIPE WORKER COORD [MAX_BODY_KB N_UNAUTH N_CONC MAX_IMAGE_MP SLOTS]
XCPIPE=$1 WORKER=$2 COORD=$3
BODY_KB=${4:-2048} N_UNAUTH=${5:-50} N_CONC=${6:-16} MP=${7:-4} SLOTS=${8:-2}
source "$(dirname "$0")/cluster_lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$HERE/../fixtures

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
# the largest image the limits allow in the body: MP megapixels, noisy enough to fill ~60% of it
python3 - "$T/img.png" "$MP" "$BODY_KB" << 'PY' || fail "cannot make the image"
import sys, zlib, struct, random
out, mp, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = 2000; h = mp * 1000000 // w
noisy = int(kb * 1024 * 0.6 * 3 / 4) // (3 * w)  # rows of random bytes (base64 fits the body)
rnd = random.Random(1)
rows = []
for y in range(h):
    rows.append(b"\0" + (rnd.randbytes(3 * w) if y < noisy else bytes(3 * w)))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b"")
open(out, "wb").write(png)
PY
ep="tcp://127.0.0.1:$(free_port)"
port=$(free_port)
KEY=sk-adm-$RANDOM$RANDOM
start_workers 3 "$ep" w --heartbeat 0.2
XC_API_KEYS="$KEY" "$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --port "$port" \
  --served-model-name tiny --max-body-kb "$BODY_KB" --max-image-mb $((BODY_KB / 1024 + 1)) \
  --max-image-mpixels "$MP" --max-concurrent-requests "$N_CONC" --preprocess-slots "$SLOTS" \
  --canary-interval 0 2> "$T/coord.log" &
CPID=$!
PIDS+=($CPID)
U="http://127.0.0.1:$port"
end=$((SECONDS + 30))
until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "$U/ready")" = 200 ]; do
  [ $SECONDS -lt $end ] || fail "/ready not 200 within 30 s"
  sleep 0.1
done
timeout 240 python3 "$HERE/api_admission.py" "$U" "$KEY" "$CPID" $((BODY_KB * 1024)) "$N_UNAUTH" \
  "$N_CONC" "$T/img.png" $((MP * 1000000)) "$SLOTS" || fail "admission checks failed"
kill -0 "$CPID" 2> /dev/null || fail "the coordinator died"
echo "api_admission: ok"
