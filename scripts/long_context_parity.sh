#!/usr/bin/env bash
# Long-context parity matrix: suites/parity/long-context.yaml (one 16,000-token prompt, llama3 RoPE, original context
# 8192) in fp32 and bf16 at TP 1 and 2. The HF reference runs once (the first run caches its goldens); the other
# three runs reuse them without loading the reference model.
#   bash scripts/long_context_parity.sh [extra parity options, e.g. --results-dir out/results]
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for dtype in float32 bfloat16; do
  for tp in 1 2; do
    echo "== long-context parity: $dtype, TP $tp"
    granite-bench parity --suite suites/parity/long-context.yaml --dtype "$dtype" --tp "$tp" "$@" || status=1
  done
done
exit $status
