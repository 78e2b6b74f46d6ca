#!/bin/bash
# mlesbench fanout against mlesd with metrics off and on (scraped every
# 100 ms), interleaved ROUNDS times. From the repository root:
#   go build -o /tmp/mlesd-head ./cmd/mlesd && deploy/bench/metrics_ab.sh 5
set -u
rounds=${1:-5}
bin=${MLESD_BIN:-/tmp/mlesd-head}
cd "$(dirname "$0")/../../bench"
for r in $(seq 1 "$rounds"); do
  for mode in off on; do
    args=""
    if [ $mode = on ]; then
      args="--metrics 127.0.0.1:19477"
      ( for i in $(seq 1 120); do curl -s -o /dev/null http://127.0.0.1:19477/metrics; sleep 0.1; done ) &
      scraper=$!
    fi
    line=$(timeout 120 go run ./cmd/mlesbench --servers mlesd --scenarios fanout --duration 5s \
      --mlesd-bin "$bin" --mlesd-args "$args" 2>&1 | grep -E '^ +mlesd ')
    [ $mode = on ] && kill $scraper 2>/dev/null
    echo "$mode $line"
  done
done
