#!/bin/bash
# CPU time per MB of one streaming workload, both processes together: a
# figure that moves much less than MB/s on a noisy machine.
#
#   benches/cpu_per_mb.sh BENCH_BINARY forward|direct stream_1m|stream_64k|client_stream [SECS]
#
# BENCH_BINARY is the file `cargo bench --bench tunnel --no-run` names.
# Needs GNU time (/usr/bin/time).
set -euo pipefail
bin=$1 mode=$2 workload=$3 secs=${4:-4}
srvmode=tunnel
[ "$mode" = direct ] && srvmode=plain
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/stdin"
# The server runs until its stdin closes.
/usr/bin/time -f "%U %S" -o "$tmp/server.time" "$bin" --role server --mode "$srvmode" \
    < "$tmp/stdin" > "$tmp/server.out" 2>/dev/null &
exec 3> "$tmp/stdin"
for _ in $(seq 100); do grep -q LISTENING "$tmp/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(grep LISTENING "$tmp/server.out" | cut -d' ' -f2)
out=$(printf 'GO\nGO\nGO\n' | /usr/bin/time -f "TIME %U %S" "$bin" --role client --mode "$mode" \
    --addr "$addr" --workloads "$workload" --duration "$secs" --warmup 0.25 2>&1)
exec 3>&-
wait
mbps=$(echo "$out" | grep RESULT | sed 's/.*mb_per_s=\([0-9.]*\).*/\1/')
client=$(echo "$out" | grep '^TIME' | awk '{print $2 + $3}')
server=$(awk '{print $1 + $2}' "$tmp/server.time")
awk -v m="$mbps" -v s="$secs" -v c="$client" -v v="$server" -v w="$mode $workload" 'BEGIN {
    mb = m * (s + 0.25)
    printf "%s: %.0f MB/s; CPU ms per MB: calling %.3f, serving %.3f, both %.3f\n",
        w, m, 1000 * c / mb, 1000 * v / mb, 1000 * (c + v) / mb }'
