#!/usr/bin/env bash
# Regenerates tests/fixtures/tokenizer/ (models, test strings with the SentencePiece library's ids,
# chat prompts, bench corpus). Needs Debian's sentencepiece (spm_train) and python3-sentencepiece.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v spm_train >/dev/null || { echo "make_fixtures.sh: spm_train missing (apt-get install sentencepiece)" >&2; exit 1; }
/usr/bin/python3 -c 'import sentencepiece' || { echo "make_fixtures.sh: apt-get install python3-sentencepiece" >&2; exit 1; }
/usr/bin/python3 tools/tokenizer/make_fixtures.py tests/fixtures/tokenizer
du -sh tests/fixtures/tokenizer
