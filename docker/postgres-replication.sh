#!/bin/sh
# Run once by the postgres image on a fresh data volume (/docker-entrypoint-initdb.d): allow
# streaming replication for the app's user from the compose network (profile `replica`,
# README "Read replica"). An existing volume needs the same line added by hand and a reload.
set -e
echo "host replication ${POSTGRES_USER:-postgres} all scram-sha-256" >>"$PGDATA/pg_hba.conf"
