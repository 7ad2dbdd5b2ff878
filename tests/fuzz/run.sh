#!/bin/sh
# Run every libFuzzer target, seeded from tests/fuzz/seeds/<target>/, and
# print one line per target with its executions and coverage; exit 1 if any
# target crashed or broke an invariant (the reproducer is kept and its path
# printed), 2 on usage.
#   run.sh BUILD_DIR          FUZZ_SECONDS (default 20) shared by all targets
#                             (make test), new inputs in a temporary corpus
#   run.sh --each BUILD_DIR   FUZZ_SECONDS (default 3600) for each target
#                             (make fuzz-long), corpus kept in
#                             FUZZ_CORPUS (default BUILD_DIR/fuzz-corpus)
set -u

each=0
if [ "${1:-}" = "--each" ]; then
    each=1
    shift
fi
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 [--each] BUILD_DIR" >&2
    exit 2
fi
BUILD=$1
HERE=$(cd "$(dirname "$0")" && pwd)
TARGETS="fuzz_cmd fuzz_data fuzz_data_diff fuzz_path fuzz_dnsauth fuzz_dns fuzz_reply fuzz_spool fuzz_history fuzz_milter fuzz_session"
if [ $each -eq 1 ]; then
    SECONDS_SET=${FUZZ_SECONDS:-3600}
else
    SECONDS_SET=${FUZZ_SECONDS:-20}
fi
case $SECONDS_SET in
    '' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number" >&2; exit 2 ;;
esac
if [ $each -eq 1 ]; then
    PER=$SECONDS_SET
else
    N=$(echo $TARGETS | wc -w)
    PER=$((SECONDS_SET / N))
fi
[ "$PER" -ge 1 ] || PER=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tern-fuzz.XXXXXX") || exit 1
# The session and spool fuzzers write spool files: tmpfs when there is one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    SHM=$(mktemp -d /dev/shm/tern-fuzz.XXXXXX) || exit 1
else
    SHM=$WORK/shm
    mkdir -p "$SHM"
fi
TERN_FUZZ_TMPDIR=$SHM
export TERN_FUZZ_TMPDIR
failed=0
for t in $TARGETS; do
    bin=$BUILD/tests/fuzz/$t
    if [ ! -x "$bin" ]; then
        echo "$t: FAIL not built ($bin)"
        failed=1
        continue
    fi
    if [ $each -eq 1 ]; then
        corpus=${FUZZ_CORPUS:-$BUILD/fuzz-corpus}/$t
    else
        corpus=$WORK/$t/corpus
    fi
    mkdir -p "$corpus" "$WORK/$t/crash"
    before=$(find "$corpus" -type f | wc -l)
    log=$WORK/$t/log
    "$bin" -max_len=4096 -max_total_time="$PER" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$WORK/$t/crash/" \
        "$corpus" "$HERE/seeds/$t" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    corp=$(($(find "$corpus" -type f | wc -l) - before))
    crash=$(find "$WORK/$t/crash" -type f | head -n 1)
    if [ $rc -ne 0 ] || [ -n "$crash" ]; then
        echo "$t: FAIL rc=$rc runs=${runs:-?} cov=${cov:-?} crash=${crash:-none} log=$log"
        grep -E 'invariant failed|ERROR: |SUMMARY: |runtime error' "$log" | head -n 10 |
            sed "s/^/  $t: /"
        failed=1
    else
        echo "$t: ok runs=${runs:-?} exec/s=${speed:-?} cov=${cov:-?} features=${ft:-?}" \
            "new_corpus=$corp seconds=$PER"
    fi
done
rm -rf "$SHM"
if [ $failed -eq 0 ]; then
    rm -rf "$WORK"
else
    echo "fuzz: failures kept in $WORK" >&2
fi
exit $failed
