#!/usr/bin/env bash
# Makes sure the official AsyncAPI parser (@asyncapi/parser, pinned in
# scripts/asyncapi/package-lock.json) is installed in scripts/asyncapi/node_modules, for
# tests/asyncapi.rs, which validates the documents event-binder generates with it through
# scripts/asyncapi/validate.mjs. Fast when it is installed and matches the lock file;
# otherwise runs `npm ci` (a few seconds, from the npm registry). Fails, saying why, when
# Node.js 18 or later and npm are missing or the install fails.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

DIR="$(cd "$(dirname "$0")/asyncapi" && pwd)"
# What was installed from: the lock file's hash, written after a successful `npm ci`.
STAMP="$DIR/node_modules/.event-binder-lock.sha256"

command -v node >/dev/null 2>&1 ||
    fail "Node.js is not installed: the AsyncAPI validation needs Node.js 18 or later and npm (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 ||
    fail "npm is not installed: the AsyncAPI validation needs it to install @asyncapi/parser (Debian: apt-get install npm)"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || fail "Node.js $(node --version) is too old: the AsyncAPI parser needs 18 or later"

wanted=$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
    exit 0
fi
echo "scripts/asyncapi.sh: installing the AsyncAPI parser (npm ci in scripts/asyncapi)" >&2
(cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error) ||
    fail "npm ci failed in $DIR"
echo "$wanted" >"$STAMP"
