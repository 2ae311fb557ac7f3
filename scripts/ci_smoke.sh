#!/usr/bin/env bash
# Smoke suite that .ci/run calls after the tests: parity, perf and eval on the tiny and canary presets into a parquet
# store, `granite-bench compare` against the previous commit, and `granite-bench dashboard`.
#
# Fails when a smoke command fails (a parity or eval check that does not pass is a failure) or when the comparison
# finds a deterministic regression (parity verdicts and errors, greedy match, canary accuracy). Timings are compared
# side by side with few trials and shown, but do not fail CI (a shared 2-core machine is too noisy to gate on few
# trials; use `granite-bench compare` with more trials for that).
#
#   bash scripts/ci_smoke.sh                 # the whole smoke suite
#   bash scripts/ci_smoke.sh install-browser # only make sure Debian's chromium is installed (for the browser tests)
#
# Output: out/results (the store: committed results/ plus this run), out/dashboard/index.html, out/smoke.log.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${SMOKE_OUT:-out}"
STORE="$OUT/results"
DASHBOARD="$OUT/dashboard"
TRIALS="${SMOKE_TRIALS:-6}"
REPS="${SMOKE_REPS:-16}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

log() { printf '\n== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

install_browser() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium (Debian package) for the dashboard's browser check"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser checks will be skipped"
  else
    echo "warning: chromium is not installed and cannot be installed here; the browser checks will be skipped"
  fi
}

if [ "${1:-}" = "install-browser" ]; then
  install_browser
  exit 0
fi

start=$(date +%s)
COMMANDS="$(granite-bench --help | sed -n 's/^│ \([a-z][a-z-]*\) .*/\1/p')"
has() { grep -qx "$1" <<<"$COMMANDS"; }

mkdir -p "$STORE"
if [ -d results ]; then
  # Committed baselines give the dashboard its history and `compare` the previous commit's results.
  cp -R results/. "$STORE"/
fi

# The canary preset, when it is there with its committed checkpoint folder.
CANARY="$(ls suites/models 2>/dev/null | sed -n 's/^\(.*canary.*\)\.yaml$/\1/p' | head -n 1)"
if [ -n "$CANARY" ]; then
  checkpoint="$(sed -n 's/^checkpoint: *//p' "suites/models/$CANARY.yaml")"
  if [ -n "$checkpoint" ] && [ ! -f "suites/models/$checkpoint/config.json" ]; then
    echo "note: preset $CANARY has no checkpoint at suites/models/$checkpoint yet; smoke runs tiny-gqa only"
    CANARY=""
  fi
fi
MODELS="tiny-gqa${CANARY:+ $CANARY}"

if has parity; then
  for model in $MODELS; do
    log "parity $model"
    granite-bench parity --model "$model" --results-dir "$STORE"
  done
fi

if has perf; then
  for model in $MODELS; do
    log "perf $model (batch 1, bucket 32, 3 rounds)"
    granite-bench perf --model "$model" --batch-sizes 1 --buckets 32 --new-tokens 16 --rounds 3 --warmup 1 \
      --results-dir "$STORE"
  done
fi

if has eval && [ -n "$CANARY" ]; then
  log "eval (default canary tasks)"
  granite-bench eval --results-dir "$STORE"
fi

if has compare && git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  log "compare HEAD~1 -> this tree ($TRIALS interleaved trials per side)"
  granite-bench compare --baseline HEAD~1 --candidate worktree --results-dir "$STORE" \
    --trials "$TRIALS" --looks 1 --reps "$REPS" --fail-on deterministic
elif has compare; then
  log "compare skipped: no previous commit"
fi

if has dashboard; then
  log "dashboard"
  granite-bench dashboard --results-dir "$STORE" --out "$DASHBOARD"
  install_browser
  BROWSER="$(command -v chromium || command -v chromium-browser || true)"
  if [ -n "$BROWSER" ]; then
    profile="$(mktemp -d)"
    dom="$("$BROWSER" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-extensions \
      --no-first-run --user-data-dir="$profile" --virtual-time-budget=10000 \
      --dump-dom "file://$(cd "$DASHBOARD" && pwd)/index.html" 2>/dev/null || true)"
    rm -rf "$profile"
    if ! grep -q 'data-status="ok"' <<<"$dom"; then
      echo "dashboard did not draw in chromium: $(grep -o '<body[^>]*>' <<<"$dom" | head -n 1)"
      exit 1
    fi
    echo "dashboard drew every chart in headless chromium: $DASHBOARD/index.html"
  fi
fi

log "smoke suite passed in $(( $(date +%s) - start )) s"
