#!/usr/bin/env bash
# Median and max of 21 timed GETs of each path at $BASE.
set -euo pipefail
for path in "$@"; do
  times=$(for i in $(seq 21); do curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "$BASE$path"; done)
  code=$(echo "$times" | awk '{print $1}' | sort | uniq -c | tr '\n' ' ')
  med=$(echo "$times" | awk '{print $2*1000}' | sort -n | sed -n 11p)
  max=$(echo "$times" | awk '{print $2*1000}' | sort -n | tail -1)
  printf '%-70s %s median %6.1f ms  max %6.1f ms\n' "$path" "$code" "$med" "$max"
done
