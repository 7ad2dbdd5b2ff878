#!/bin/sh
# Run every libFuzzer target for a share of $FUZZ_SECONDS (default 20)
# seconds, seeded from tests/fuzz/seeds/<target>/, writing new inputs to a
# temporary corpus. Prints one summary line per target; exits 1 if any
# target crashed (the reproducer is kept and its path printed), 2 on usage.
# Usage: tests/fuzz/run.sh BUILD_DIR
set -u

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 BUILD_DIR" >&2
    exit 2
fi
BUILD=$1
HERE=$(cd "$(dirname "$0")" && pwd)
TARGETS="fuzz_cmd fuzz_data fuzz_data_diff fuzz_path fuzz_dnsauth"
TOTAL=${FUZZ_SECONDS:-20}
case $TOTAL in
    '' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number" >&2; exit 2 ;;
esac
N=$(echo $TARGETS | wc -w)
PER=$((TOTAL / N))
[ "$PER" -ge 1 ] || PER=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tern-fuzz.XXXXXX") || exit 1
failed=0
for t in $TARGETS; do
    bin=$BUILD/tests/fuzz/$t
    if [ ! -x "$bin" ]; then
        echo "$t: FAIL not built ($bin)"
        failed=1
        continue
    fi
    mkdir -p "$WORK/$t/corpus" "$WORK/$t/crash"
    log=$WORK/$t/log
    "$bin" -max_len=4096 -max_total_time="$PER" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$WORK/$t/crash/" \
        "$WORK/$t/corpus" "$HERE/seeds/$t" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    corp=$(find "$WORK/$t/corpus" -type f | wc -l)
    crash=$(find "$WORK/$t/crash" -type f | head -n 1)
    if [ $rc -ne 0 ] || [ -n "$crash" ]; then
        echo "$t: FAIL rc=$rc runs=${runs:-?} cov=${cov:-?} crash=${crash:-none} log=$log"
        grep -E 'invariant failed|ERROR: |SUMMARY: |runtime error' "$log" | head -n 10 |
            sed "s/^/  $t: /"
        failed=1
    else
        echo "$t: ok runs=${runs:-?} cov=${cov:-?} new_corpus=$corp seconds=$PER"
    fi
done
if [ $failed -eq 0 ]; then
    rm -rf "$WORK"
else
    echo "fuzz: failures kept in $WORK" >&2
fi
exit $failed
