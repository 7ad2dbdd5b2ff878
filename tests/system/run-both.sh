#!/bin/bash
# The end-to-end suite twice: against the normal build and against the
# ASan/UBSan build. Both runs spend most of their time waiting (timers,
# retries, peers), so as root they run side by side, each in a network
# namespace of its own: its own 127.0.0.0/8, where the fixed ports some
# tests need (HTTPS on 127.0.0.x:443, DNS servers) cannot meet the other
# run's. Elsewhere (not root, no namespaces, or TERN_SYSTEM_SERIAL set)
# they run one after the other.
#   usage: tests/system/run-both.sh PYTHON BUILD_DIR ASAN_BUILD_DIR [pytest args]
set -uo pipefail
if [ "${1:-}" = --inner ]; then # in a new network namespace: loopback first
    shift
    ip link set lo up || exit 1
    exec env "$@"
fi
cd "$(dirname "$0")/../.."
python=$1 build=$2 asan=$3
shift 3
pytest=("$python" -m pytest -q -p no:cacheprovider tests/system "$@")
normal=(TERN_BUILD="$build" "${pytest[@]}")
sanitized=(TERN_BUILD="$asan" TERN_ASAN=1 "${pytest[@]}")

if [ -n "${TERN_SYSTEM_SERIAL:-}" ] || [ "$(id -u)" != 0 ] ||
    ! command -v ip >/dev/null || ! unshare --net ip link set lo up 2>/dev/null; then
    env "${normal[@]}" || exit
    exec env "${sanitized[@]}"
fi

logs=$(mktemp -d /tmp/tern-system.XXXXXX)
trap 'rm -rf "$logs"' EXIT
echo "end-to-end suite: normal and ASan builds side by side, each in its own network namespace"
unshare --net "$0" --inner "${normal[@]}" >"$logs/normal" 2>&1 &
p_normal=$!
unshare --net "$0" --inner "${sanitized[@]}" >"$logs/asan" 2>&1 &
p_asan=$!
wait $p_normal
rc_normal=$?
wait $p_asan
rc_asan=$?
echo "=== end-to-end suite, normal build (exit $rc_normal) ==="
cat "$logs/normal"
echo "=== end-to-end suite, ASan/UBSan build (exit $rc_asan) ==="
cat "$logs/asan"
[ $rc_normal = 0 ] && [ $rc_asan = 0 ]
