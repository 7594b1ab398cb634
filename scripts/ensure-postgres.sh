#!/usr/bin/env bash
# Make sure a PostgreSQL server (initdb, pg_ctl, postgres) is installed, so the tests can start
# their own throwaway cluster (tests/pgserver.py). Idempotent and silent when already installed.
# Installs Debian's `postgresql` package only when running as root; otherwise it says why and
# exits 0, and the PostgreSQL tests skip themselves. The Debian "main" cluster is neither created
# nor started: a temporary policy-rc.d refuses service starts during the install.
set -euo pipefail

have_server() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && return 0
    done
    command -v initdb && command -v pg_ctl && command -v postgres
} >/dev/null 2>&1

have_server && exit 0

skip() { echo "ensure-postgres: $*; the PostgreSQL tests will be skipped." >&2; exit 0; }
[[ $(id -u) -eq 0 ]] || skip "no PostgreSQL server found, and not root so not installing one"
command -v apt-get >/dev/null || skip "no PostgreSQL server found and no apt-get to install it"

cleanup=()
trap 'rm -f "${cleanup[@]}"' EXIT

# Refuse service starts during the install (invoke-rc.d and deb-systemd-invoke honour this).
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    cleanup+=(/usr/sbin/policy-rc.d)
fi
# Do not create the "main" cluster either: we only need the binaries.
nomain=/etc/postgresql-common/createcluster.d/zz-relance-no-main-cluster.conf
if [[ ! -e $nomain ]]; then
    mkdir -p "${nomain%/*}"
    echo 'create_main_cluster = false' >"$nomain"
    cleanup+=("$nomain")
fi

echo "ensure-postgres: installing PostgreSQL (apt-get install postgresql)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if ! have_server; then
    echo "ensure-postgres: postgresql installed but initdb/pg_ctl/postgres still not found" >&2
    exit 1
fi
echo "ensure-postgres: PostgreSQL installed." >&2
