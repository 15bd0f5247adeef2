#!/usr/bin/env bash
# Stop (and delete) the throwaway PostgreSQL servers that start-postgres.sh started.
set -uo pipefail
[ -f /tmp/catalog-pg.started ] || exit 0
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
while read -r DATA; do
    [ -d "$DATA" ] || continue
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/bash -c "'$PGBIN/pg_ctl' -D '$DATA' -m fast -w stop" >/dev/null 2>&1
    else
        "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1
    fi
    rm -rf "$DATA"
done < /tmp/catalog-pg.started
rm -f /tmp/catalog-pg.started
