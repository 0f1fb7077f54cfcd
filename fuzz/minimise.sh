#!/usr/bin/env bash
# Minimise every committed corpus in place (`cargo fuzz cmin`: keep the smallest set of
# files that covers what the whole corpus covers). Run after fuzz/long-run.sh, then commit
# fuzz/corpus. The uncommitted capture seeds (fuzz/seeds) are left out on purpose: the
# captures must not be copied into the project.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  before=$(find "corpus/$t" -type f | wc -l)
  cargo fuzz cmin -O "$t" "corpus/$t" -- -rss_limit_mb=2048 -timeout=5 -max_len=8192 >/dev/null 2>&1
  echo "$t: $before -> $(find "corpus/$t" -type f | wc -l) files"
done
