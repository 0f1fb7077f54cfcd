#!/usr/bin/env bash
# Print a Markdown table from the logs fuzz/long-run.sh left in fuzz/logs: per target the
# seconds run, executions, executions per second, coverage (libFuzzer's `cov`, edges) and
# features (`ft`) at the end, the corpus libFuzzer held, and the files in fuzz/corpus/<t> now.
set -euo pipefail
cd "$(dirname "$0")"
echo "| target | seconds | executions | exec/s | cov | ft | corpus held | files committed | result |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
for log in logs/*.log; do
  t=$(basename "$log" .log)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | awk '{print $5}' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
  files=$(find "corpus/$t" -type f | wc -l)
  if grep -qE '^==[0-9]+== ?ERROR|^SUMMARY: libFuzzer|panicked at' "$log"; then
    result="**finding**"
  else
    result="no finding"
  fi
  echo "| $t | ${secs:-?} | $runs | $rate | ${cov:-?} | ${ft:-?} | ${corp:-?} | $files | $result |"
done
