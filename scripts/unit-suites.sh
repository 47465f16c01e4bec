#!/usr/bin/env bash
# The unit suite on SQLite and on PostgreSQL side by side: one pytest process each (a core each on
# the 2-core CI machines), about 4 minutes instead of 7 one after the other. They share nothing: the
# fake hypervisor, pytest's numbered temporary directories, a throwaway PostgreSQL per run
# (tests/postgres.py). The SQLite run's output is shown after the PostgreSQL one's; the script
# fails if either fails.
set -uo pipefail
bin=${BIN:-.venv/bin}
log=$(mktemp --tmpdir shiftdesk-unit-sqlite.XXXXXX)
trap 'kill "$sqlite" 2>/dev/null; rm -f "$log"' EXIT
"$bin/pytest" -q -p no:cacheprovider tests/unit >"$log" 2>&1 &
sqlite=$!
echo "--- unit suite on PostgreSQL"
SHIFTDESK_TEST_DB=postgresql "$bin/pytest" -q tests/unit
pg=$?
wait "$sqlite"
lite=$?
echo "--- unit suite on SQLite"
cat "$log"
exit $(( pg != 0 || lite != 0 ))
