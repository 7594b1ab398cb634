#!/usr/bin/env bash
# Make sure Debian's `chromium` is installed, so the dashboard's browser tests
# (tests/e2e/test_dashboard.py) can drive it with Playwright. Playwright never downloads a
# browser here: the tests launch this one through `executable_path`. Idempotent and silent
# when already installed. Installs only when running as root; otherwise it says why and exits
# 0, and the browser tests skip themselves.
set -euo pipefail

have_chromium() {
    command -v chromium || [[ -x /usr/bin/chromium ]]
} >/dev/null 2>&1

have_chromium && exit 0

skip() { echo "ensure-chromium: $*; the dashboard's browser tests will be skipped." >&2; exit 0; }
[[ $(id -u) -eq 0 ]] || skip "no chromium found, and not root so not installing it"
command -v apt-get >/dev/null || skip "no chromium found and no apt-get to install it"

echo "ensure-chromium: installing Debian's chromium (apt-get install chromium)..." >&2
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
# The package lists may be missing or stale on a fresh machine: update them only then.
install || { apt-get update -qq && install; }

have_chromium || { echo "ensure-chromium: chromium installed but not found" >&2; exit 1; }
echo "ensure-chromium: chromium installed." >&2
