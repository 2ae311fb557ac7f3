#!/usr/bin/env bash
# Smoke suite that .ci/run calls after the tests: parity, perf and eval on the tiny and canary presets into a parquet
# store, `granite-bench compare` of this run's parity and eval against the committed baselines in results/, the
# decode-step timings of the previous commit and this tree side by side, and `granite-bench dashboard`.
#
# Fails when a smoke command fails (a parity or eval check that does not pass is a failure) or when the comparison
# finds a deterministic regression (parity verdicts and errors, greedy match, canary accuracy) against the newest
# committed clean run of each model in results/ (refresh them by committing `granite-bench parity/eval
# --results-dir results` runs when a change is meant to move them). Without committed baselines it compares with the
# previous commit, re-running parity and eval in its tree. Timings are compared side by side with few trials and
# shown, but do not fail CI (a shared 2-core machine is too noisy to gate on few trials; use `granite-bench compare`
# with more trials for that; SMOKE_TIMING=0 skips them).
#
#   bash scripts/ci_smoke.sh                 # the whole smoke suite
#   bash scripts/ci_smoke.sh install-browser # only make sure Debian's chromium is installed (for the browser tests)
#
# Output: out/results (the store: committed results/ plus this run), out/dashboard/index.html, out/smoke.log.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${SMOKE_OUT:-out}"
STORE="$OUT/results"
RUN="$OUT/run"   # this run's results alone, copied into $STORE after
DASHBOARD="$OUT/dashboard"
TRIALS="${SMOKE_TRIALS:-6}"
REPS="${SMOKE_REPS:-16}"
TIMING="${SMOKE_TIMING:-1}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

log() { printf '\n== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# Comma-separated run ids in store $1: per deterministic table and configuration, the newest run (of a clean tree
# unless $2 is "any").
newest_runs() {
  local store="$1" clean="" query="" table
  [ "${2:-}" = any ] || clean="where not git_dirty"
  for table in parity_summary eval_summary; do
    [ -d "$store/$table" ] || continue
    query="${query:+$query union }select run_id from (select run_id, row_number() over (partition by suite, model, \
dtype, device, tp_degree order by utc_time desc) as n from $table $clean) where n = 1"
  done
  [ -n "$query" ] || return 0
  granite-bench results --results-dir "$store" --sql "$query" --limit 0 --csv "$OUT/run_ids.csv" >/dev/null
  tail -n +2 "$OUT/run_ids.csv" | paste -sd, -
}

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

rm -rf "$RUN"
mkdir -p "$STORE" "$RUN"
BASELINE=""
if [ -d results ]; then
  # Committed baselines give the dashboard its history and `compare` its baseline.
  cp -R results/. "$STORE"/
  BASELINE="$(newest_runs results)"
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
    granite-bench parity --model "$model" --results-dir "$RUN"
  done
fi

if has perf; then
  for model in $MODELS; do
    log "perf $model (batch 1, bucket 32, 3 rounds)"
    granite-bench perf --model "$model" --batch-sizes 1 --buckets 32 --new-tokens 16 --rounds 3 --warmup 1 \
      --results-dir "$RUN"
  done
fi

if has eval && [ -n "$CANARY" ]; then
  log "eval (default canary tasks)"
  granite-bench eval --results-dir "$RUN"
fi
cp -R "$RUN"/. "$STORE"/
CANDIDATE="$(newest_runs "$RUN" any)"

if has compare && [ -n "$BASELINE" ] && [ -n "$CANDIDATE" ]; then
  log "compare the committed baselines ($BASELINE) -> this run ($CANDIDATE)"
  granite-bench compare --baseline "$BASELINE" --candidate "$CANDIDATE" --results-dir "$STORE" --no-timing \
    --fail-on deterministic
  if [ "$TIMING" != 0 ] && git rev-parse --verify --quiet HEAD~1 >/dev/null; then
    log "compare timings HEAD~1 -> this tree ($TRIALS interleaved trials per side, shown, not gated)"
    granite-bench compare --baseline HEAD~1 --candidate worktree --results-dir "$STORE" --no-deterministic \
      --trials "$TRIALS" --looks 1 --reps "$REPS" --fail-on deterministic
  fi
elif has compare && git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  log "compare HEAD~1 -> this tree (no committed baselines; $TRIALS interleaved trials per side)"
  granite-bench compare --baseline HEAD~1 --candidate worktree --results-dir "$STORE" \
    --trials "$TRIALS" --looks 1 --reps "$REPS" --fail-on deterministic
elif has compare; then
  log "compare skipped: no committed baselines and no previous commit"
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
