#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the tests; prints its data directory
# (a comment line) and, last, the URL to use. CATALOG_PG_BIN picks another server build
# (its bin directory; default: the newest Debian one).
# The Debian server refuses to run as root, so it runs as the `postgres` user.
set -euo pipefail
PORT="${CATALOG_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
if [ -z "${CATALOG_PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "${CATALOG_PG_INSTALL:-0}" = 1 ]; then
    echo "installing PostgreSQL (Debian package)..." >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
PGBIN="${CATALOG_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
if [ ! -x "$PGBIN/initdb" ]; then
    echo "no PostgreSQL server: no initdb in '${PGBIN:-/usr/lib/postgresql/*/bin}'" \
        "(install Debian's postgresql, or set CATALOG_PG_BIN to a server's bin directory)" >&2
    exit 1
fi
DATA="$(mktemp -d /tmp/catalog-pg.XXXXXX)"
echo "$DATA" >> /tmp/catalog-pg.started
chown postgres:postgres "$DATA"
run_as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
run_as_postgres "'$PGBIN/initdb' -D '$DATA' -A trust -U postgres -E UTF8 >/dev/null"
echo "$PGBIN" > "$DATA/catalog-pg-bin"  # for stop-postgres.sh
run_as_postgres "'$PGBIN/pg_ctl' -D '$DATA' -l '$DATA/server.log' -w start -o \
  \"-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
  -c full_page_writes=off -c max_connections=200\"" >&2
echo "# data directory: $DATA (stop with scripts/stop-postgres.sh '$DATA')"
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
