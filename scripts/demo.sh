#!/usr/bin/env bash
# `make run`: build the golden image (cached), create a small demo pool, serve the API.
set -euo pipefail
size=${1:-2}
bin=.venv/bin
"$bin/shiftdesk" image build busybox-desktop >/dev/null
if ! "$bin/shiftdesk" pool ls --json | grep -q '"name": "demo"'; then
  "$bin/shiftdesk" pool create demo --image busybox-desktop --size "$size" --no-wait
fi
echo "demo pool: $size desktops cloned from busybox-desktop (state: shiftdesk desktop ls)"
echo "API token for this host's operator: SHIFTDESK_DATA_DIR=$SHIFTDESK_DATA_DIR $bin/shiftdesk token"
exec "$bin/shiftdesk" serve
