#!/usr/bin/env bash
# Stop (and delete) throwaway PostgreSQL servers started by start-postgres.sh: the data
# directory given as an argument, or, without one, every server it has started.
set -uo pipefail
stop_one() {
    local DATA="$1" PGBIN
    [ -d "$DATA" ] || return 0
    # The build that started it (start-postgres.sh records it), else the newest Debian one.
    PGBIN="$(cat "$DATA/catalog-pg-bin" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/bash -c "'$PGBIN/pg_ctl' -D '$DATA' -m fast -w stop" >/dev/null 2>&1
    else
        "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1
    fi
    rm -rf "$DATA"
    [ -f /tmp/catalog-pg.started ] && sed -i "\#^$DATA\$#d" /tmp/catalog-pg.started
}
if [ $# -gt 0 ]; then
    for DATA in "$@"; do stop_one "$DATA"; done
    exit 0
fi
[ -f /tmp/catalog-pg.started ] || exit 0
for DATA in $(cat /tmp/catalog-pg.started); do stop_one "$DATA"; done
rm -f /tmp/catalog-pg.started
