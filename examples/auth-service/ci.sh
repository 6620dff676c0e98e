#!/usr/bin/env bash
# Generates the client's types from `tuma openapi` (so they cannot go stale),
# compiles the example with `tsc --strict`, and runs it against a live
# `tuma serve` on a fresh SQLite database with the shipped configuration.
# Usage: examples/auth-service/ci.sh [path/to/tuma]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tuma="${1:-$root/target/debug/tuma}"
tuma="$(cd "$(dirname "$tuma")" && pwd)/$(basename "$tuma")"

cd "$here"
npm ci --no-audit --no-fund --loglevel=error
"$tuma" openapi > openapi.json
npx openapi-typescript openapi.json -o src/tuma-api.d.ts
npx tsc -p .

work="$(mktemp -d)"
cp -r "$root/providers.toml" "$root/templates" "$work/"
cd "$work"
export TUMA_CONFIG="$work/providers.toml" DATABASE_URL="sqlite://$work/tuma.db" RUST_LOG=warn
send_key="$("$tuma" keys create --name auth-service --scope send --scope read 2>/dev/null)"
ops_key="$("$tuma" keys create --name ops --scope ops --scope read 2>/dev/null)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$tuma" serve --listen "127.0.0.1:$port" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz')" 2>/dev/null && break
  sleep 0.1
done
TUMA_URL="http://127.0.0.1:$port" TUMA_API_KEY="$send_key" TUMA_OPS_KEY="$ops_key" \
  node "$here/dist/main.js"
