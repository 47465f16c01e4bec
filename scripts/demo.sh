#!/usr/bin/env bash
# `make run`: the whole product on the embedded defaults (SQLite, this host's libvirt): the golden
# image (cached), a demo AD on loopback with its users, the example policies, two demo pools sized
# by their rosters, and `shiftdesk serve`. Ctrl-C stops the server and the demo AD; the data stays
# in SHIFTDESK_DATA_DIR for the next run.
set -euo pipefail
bin=.venv/bin
"$bin/shiftdesk" image build busybox-desktop >/dev/null
trap '"$bin/shiftdesk" demo stop' EXIT
"$bin/shiftdesk" demo up
# the demo AD's settings; a real directory is selected the same way (README: "Active Directory")
# shellcheck disable=SC1091
source "$SHIFTDESK_DATA_DIR/demo/ldap.env"
port=${SHIFTDESK_API__PORT:-8600}
echo "portal (agents): https://127.0.0.1:$port/portal/   console (admins): https://127.0.0.1:$port/console/"
echo "the browser warns about the certificate unless it trusts $SHIFTDESK_DATA_DIR/tls/ca.pem"
"$bin/shiftdesk" serve
