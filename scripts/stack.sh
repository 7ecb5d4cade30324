#!/usr/bin/env bash
# The team setup on one machine, for trying it on a laptop and for the team tests:
# PostgreSQL (MLflow's runs, registry and users), moto_server (S3: MLflow artifacts and the DVC
# remote) and `mlflow server --app-name basic-auth` on top of both, all on 127.0.0.1, free ports.
#
#   scripts/stack.sh start    # start all three (idempotent: a running stack is left alone)
#   eval "$(scripts/stack.sh env)"   # MLFLOW_TRACKING_URI and the `ci` user, S3, DVC remote
#   eval "$(scripts/stack.sh env viewer)"   # the same as `viewer` (or `admin`)
#   scripts/stack.sh stop     # stop exactly the processes start started (pid files), keep the data
#
# State (database files, logs, pid files, ports, generated passwords, mode 600) lives in
# $STACK_DIR, default .stack/ in the repository (gitignored). moto keeps its objects in memory
# only: they are gone after stop. Run as root (CI), PostgreSQL runs as the `postgres` user,
# since initdb refuses root. The admin's password is $MLFLOW_AUTH_ADMIN_PASSWORD, else one
# generated into $STACK_DIR/admin.password; MLflow uses it only when it creates the admin, on the
# first start against an empty user database (docs/team.md: rotation).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$repo/.stack}"
STARTUP_TIMEOUT_S="${STACK_STARTUP_TIMEOUT_S:-180}"
MLFLOW_BUCKET=mlflow
# MLflow's runs and registry, and the basic-auth app's users and permissions.
DATABASES="mlflow mlflow_auth"
DVC_BUCKET=dvc
# moto accepts any credentials; these only have to be the same for every client.
S3_KEY=stack
S3_SECRET=stack-secret

die() { echo "stack: error: $*" >&2; exit 1; }
log() { echo "stack: $*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() {  # alive NAME: the process recorded in NAME.pid runs
    local pid
    pid="$(cat "$STACK_DIR/$1.pid" 2>/dev/null)" || return 1
    # A zombie (exited, not yet reaped where no init reaps) answers kill -0 but is gone.
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

secret() {  # secret NAME: the password in $STACK_DIR/NAME.password, generated (mode 600) if missing
    local file="$STACK_DIR/$1.password"
    [ -s "$file" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(16))' >"$file")
    chmod 600 "$file"
    cat "$file"
}

admin_password() {
    if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
        printf '%s\n' "$MLFLOW_AUTH_ADMIN_PASSWORD"
    else
        secret admin
    fi
}

pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return
    fi
    [ "$(id -u)" = 0 ] || die "PostgreSQL (initdb, pg_ctl) is not installed; install Debian's postgresql package (sudo apt-get install postgresql) and rerun"
    log "installing Debian's postgresql package (no initdb found)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } \
        || die "apt-get install postgresql failed; install PostgreSQL 15 by hand and rerun"
    pg_bindir
}

as_pg() {  # run a PostgreSQL command as the server's owner: `postgres` when we are root
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_root() {
    # The postgres user must reach its folder; a root-owned private parent (/root, pytest's
    # /tmp/pytest-of-root) stops it, so then it goes to /tmp, named after $STACK_DIR.
    if [ "$(id -u)" != 0 ] || runuser -u postgres -- test -x "$STACK_DIR"; then
        echo "$STACK_DIR/postgres"
    else
        echo "/tmp/mnist-stack-$(printf %s "$STACK_DIR" | sha256sum | cut -c1-16)"
    fi
}

start_postgres() {
    local bin root port
    bin="$(pg_bindir)"
    root="$(pg_root)"
    echo "$root" >"$STACK_DIR/postgres.root"
    if [ ! -f "$root/data/PG_VERSION" ]; then
        mkdir -p "$root/data"
        chmod 700 "$root/data"
        (umask 077 && secret postgres >"$root/initdb.pw")
        [ "$(id -u)" != 0 ] || chown -R postgres "$root"
        as_pg "$bin/initdb" -D "$root/data" -U mlflow --pwfile="$root/initdb.pw" --auth=scram-sha-256 -E UTF8 \
            >"$STACK_DIR/initdb.log" 2>&1 || { rm -f "$root/initdb.pw"; die "initdb failed, see $STACK_DIR/initdb.log"; }
        rm -f "$root/initdb.pw"
    fi
    if alive postgres; then
        return
    fi
    port="$(free_port)"
    # TCP on 127.0.0.1 only; no Unix socket, so nothing depends on /var/run/postgresql.
    as_pg "$bin/pg_ctl" -D "$root/data" -l "$root/postgres.log" -w -t "$STARTUP_TIMEOUT_S" \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=''" start >/dev/null \
        || die "PostgreSQL did not start, see $root/postgres.log"
    head -1 "$root/data/postmaster.pid" >"$STACK_DIR/postgres.pid"
    echo "$port" >"$STACK_DIR/postgres.port"
    local db
    for db in $DATABASES; do
        PGPASSWORD="$(secret postgres)" "$bin/psql" -h 127.0.0.1 -p "$port" -U mlflow -d postgres -tAq \
            -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
            || PGPASSWORD="$(secret postgres)" "$bin/createdb" -h 127.0.0.1 -p "$port" -U mlflow "$db" \
            || die "could not create database $db, see $root/postgres.log"
    done
    log "PostgreSQL on 127.0.0.1:$port (data $root/data)"
}

wait_http() {  # wait_http NAME URL: until URL answers, or NAME's process died, or the timeout
    local deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$2" 2>/dev/null; do
        alive "$1" || die "$1 exited; see $STACK_DIR/$1.log"
        [ $SECONDS -lt $deadline ] || die "$1 not answering at $2 after $STARTUP_TIMEOUT_S s; see $STACK_DIR/$1.log"
        sleep 0.5
    done
}

spawn() {  # spawn NAME COMMAND...: in its own session (stop takes its children too), pid to NAME.pid
    local name="$1"
    shift
    setsid "$@" >"$STACK_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$STACK_DIR/$name.pid"
}

start_s3() {
    alive s3 && return
    local port
    port="$(free_port)"
    command -v moto_server >/dev/null || die "moto_server not found; pip install -r requirements/team.txt -e . (it brings moto[server])"
    spawn s3 moto_server -H 127.0.0.1 -p "$port"
    echo "$port" >"$STACK_DIR/s3.port"
    wait_http s3 "http://127.0.0.1:$port/"
    AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET python3 - "$port" "$MLFLOW_BUCKET" "$DVC_BUCKET" <<'PY'
import sys

import boto3

s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
for bucket in sys.argv[2:]:
    s3.create_bucket(Bucket=bucket)
PY
    log "S3 (moto_server) on 127.0.0.1:$port, buckets $MLFLOW_BUCKET and $DVC_BUCKET"
}

backend_uri() {  # backend_uri DATABASE
    echo "postgresql+psycopg://mlflow:$(secret postgres)@127.0.0.1:$(cat "$STACK_DIR/postgres.port")/$1"
}

write_auth_config() {
    # The basic-auth app reads its database from this file only (no environment variable), so
    # the file holds the PostgreSQL password: mode 600, in $STACK_DIR, rewritten on each start
    # (PostgreSQL's port changes). default_permission READ: a user without a grant on an
    # experiment or model (viewer, or anyone on another user's) reads it but changes nothing.
    # auth_cache_ttl_seconds: without it every request pays a password hash check (werkzeug's
    # scrypt: 0.2 s with check_password_hash on the shared 2-core dev machine); with one worker,
    # a password change through the API still takes effect at once.
    (umask 077 && cat >"$STACK_DIR/auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $(backend_uri mlflow_auth)
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 300
EOF
    )
    chmod 600 "$STACK_DIR/auth.ini"
}

start_mlflow() {
    alive mlflow && return
    local port
    port="$(free_port)"
    command -v mlflow >/dev/null || die "mlflow not found; activate the project's virtual environment"
    echo "$port" >"$STACK_DIR/mlflow.port"
    write_auth_config
    # Every credential through the environment or the 600 file, none on a command line (ps).
    # The Flask secret key signs the auth app's CSRF tokens; it must stay the same across restarts.
    # STACK_MLFLOW_S3_ENDPOINT: another way for the server to reach S3 (the tests put a proxy there).
    MLFLOW_S3_ENDPOINT_URL="${STACK_MLFLOW_S3_ENDPOINT:-http://127.0.0.1:$(cat "$STACK_DIR/s3.port")}" \
        AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_DEFAULT_REGION=us-east-1 \
        MLFLOW_BACKEND_STORE_URI="$(backend_uri mlflow)" \
        MLFLOW_AUTH_CONFIG_PATH="$STACK_DIR/auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$(admin_password)" \
        MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret flask-secret-key)" \
        spawn mlflow mlflow server --app-name basic-auth --host 127.0.0.1 --port "$port" --workers 1 \
        --artifacts-destination "s3://$MLFLOW_BUCKET/artifacts"
    wait_http mlflow "http://127.0.0.1:$port/health"
    log "MLflow server on http://127.0.0.1:$port (basic-auth; runs and users in PostgreSQL, artifacts in s3://$MLFLOW_BUCKET/artifacts)"
}

add_users() {
    # As admin: users ci and viewer (passwords from $STACK_DIR, reset to them on every start),
    # the experiment and registered model params.yaml names, and the two users' grants on them.
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(admin_password)" \
        MLFLOW_TRACKING_URI="http://127.0.0.1:$(cat "$STACK_DIR/mlflow.port")" \
        CI_USER_PASSWORD="$(secret ci)" VIEWER_USER_PASSWORD="$(secret viewer)" \
        PYTHONPATH="$repo" python3 "$repo/scripts/mlflow_users.py" "$repo/params.yaml" >&2 \
        || die "could not set up the users ci and viewer (is the admin password the one the server started with?)"
}

group_alive() {  # group_alive PGID: a process of that group runs (zombies, never reaped here, aside)
    local stat fields
    for stat in /proc/[0-9]*/stat; do
        stat="$(cat "$stat" 2>/dev/null)" || continue
        read -r -a fields <<<"${stat##*) }" # after the command's name: state ppid pgrp ...
        [ "${fields[2]}" = "$1" ] && [ "${fields[0]}" != Z ] && return 0
    done
    return 1
}

stop_one() {  # stop_one NAME: TERM the session NAME.pid leads, KILL it after 10 s
    # The whole session, even when its leader has died: mlflow's workers would keep the port.
    local pid
    pid="$(cat "$STACK_DIR/$1.pid" 2>/dev/null)" || return 0
    if [ -n "$pid" ] && group_alive "$pid"; then
        kill -TERM -- "-$pid" 2>/dev/null
        for _ in $(seq 20); do
            group_alive "$pid" || break
            sleep 0.5
        done
        group_alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null
        log "stopped $1 (pid $pid)"
    fi
    rm -f "$STACK_DIR/$1.pid"
}

stop_postgres() {
    [ -f "$STACK_DIR/postgres.pid" ] || return 0
    if alive postgres; then
        as_pg "$(pg_bindir)/pg_ctl" -D "$(cat "$STACK_DIR/postgres.root")/data" -m fast -w stop >/dev/null
        log "stopped PostgreSQL (pid $(cat "$STACK_DIR/postgres.pid"))"
    fi
    rm -f "$STACK_DIR/postgres.pid"
}

print_env() {  # print_env USER: ci (default), viewer or admin
    local user="$1" password
    for name in postgres s3 mlflow; do
        alive "$name" || die "$name is not running; run scripts/stack.sh start"
    done
    case "$user" in
        ci | viewer) password="$(secret "$user")" ;;
        admin) password="$(admin_password)" ;;
        *) die "no user $user; choose ci, viewer or admin" ;;
    esac
    local s3="http://127.0.0.1:$(cat "$STACK_DIR/s3.port")"
    # %q: a value with spaces or ; stays one value under eval "$(scripts/stack.sh env)"
    printf 'export %s=%q\n' \
        MLFLOW_TRACKING_URI "http://127.0.0.1:$(cat "$STACK_DIR/mlflow.port")" \
        MLFLOW_TRACKING_USERNAME "$user" \
        MLFLOW_TRACKING_PASSWORD "$password" \
        AWS_ACCESS_KEY_ID "$S3_KEY" \
        AWS_SECRET_ACCESS_KEY "$S3_SECRET" \
        AWS_DEFAULT_REGION us-east-1 \
        STACK_S3_ENDPOINT "$s3" \
        STACK_DVC_REMOTE "s3://$DVC_BUCKET" \
        STACK_MLFLOW_ARTIFACTS "s3://$MLFLOW_BUCKET/artifacts"
}

case "${1:-}" in
    start)
        mkdir -p "$STACK_DIR"
        start_postgres
        start_s3
        start_mlflow
        add_users
        ;;
    stop)
        [ -d "$STACK_DIR" ] || exit 0
        stop_one mlflow
        stop_one s3
        stop_postgres
        ;;
    env)
        print_env "${2:-ci}"
        ;;
    *)
        echo "usage: scripts/stack.sh start|stop|env [ci|viewer|admin]" >&2
        exit 2
        ;;
esac
