#!/usr/bin/env bash
# Run every fuzz target for a long while and print a table of what each run did.
#
#   fuzz/long-run.sh [SECONDS_PER_TARGET] [PARALLEL]     (defaults: 600 and 2)
#
# Each target runs on its committed corpus (fuzz/corpus/<t>, where new inputs go) plus the
# uncommitted capture seeds (fuzz/seeds/<t>, from `python3 fuzz/seed.py`), with
# -rss_limit_mb=2048 -timeout=5. Logs go to fuzz/logs/<t>.log, crashes to fuzz/artifacts/<t>/.
# Afterwards minimise the corpora with `fuzz/minimise.sh`.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
par=${2:-2}
export RUSTC_BOOTSTRAP=1
mkdir -p logs
cargo fuzz build -O
run_one() {
  t=$1
  mkdir -p "corpus/$t" "seeds/$t"
  if nice -n 10 cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=5 -max_len=8192 \
    -print_final_stats=1 >"logs/$t.log" 2>&1; then
    echo "$t: ok"
  else
    echo "$t: FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
  fi
}
export -f run_one
export secs
cargo fuzz list | xargs -P "$par" -I{} bash -c 'run_one {}'
./stats.sh
