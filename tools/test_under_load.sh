#!/usr/bin/env bash
# The test suite beside busy CPU hogs (`make test-load`), as when two trainings share a developer's
# two cores or a CI runner is oversubscribed: a test that passes alone must pass here too.
#   tools/test_under_load.sh [pytest args...]    (env: PYTHON, the interpreter; HOGS, default 2)
# The hogs are stopped however pytest ends (failure, Ctrl-C, this script killed: each hog also
# exits by itself once this script is gone).
set -u
PY=${PYTHON:-python3}
HOGS=${HOGS:-2}
hogs=()
stop_hogs() {
    for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${hogs[@]}"; do wait "$pid" 2>/dev/null; done
}
trap stop_hogs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
for _ in $(seq "$HOGS"); do
    # A busy loop that ends when its parent (this script) is no longer the one that started it.
    "$PY" -c 'import os
parent = os.getppid()
while os.getppid() == parent:
    pass' &
    hogs+=("$!")
done
echo "[test-load] ${#hogs[@]} CPU hogs running (pids ${hogs[*]}) beside: $PY -m pytest $*"
"$PY" -m pytest "$@"
status=$?
echo "[test-load] pytest exited with status $status; stopping the hogs"
exit "$status"
