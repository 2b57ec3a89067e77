#!/usr/bin/env bash
# Installs the benchmark's Restate peer: the Restate server from npm (the
# version pinned in package-lock.json) and the restate-trip service built
# from this folder. Idempotent; works from any folder. Prints the two
# binaries' paths.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
here="$(pwd)"

# The server: @restatedev/restate-server ships a small Node launcher and the
# real binary in a per-platform optional dependency.
if [ ! -x node_modules/.bin/restate-server ] || ! npm ls --prefix "$here" --depth=0 >/dev/null 2>&1; then
    # --ignore-scripts: the only install script is @scarf/scarf's download
    # analytics; the server needs none.
    SCARF_ANALYTICS=false npm ci --prefix "$here" --ignore-scripts --no-audit --no-fund --loglevel=error
fi
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) platform=linux-x64 ;;
    Linux-aarch64 | Linux-arm64) platform=linux-arm64 ;;
    Darwin-x86_64) platform=darwin-x64 ;;
    Darwin-arm64) platform=darwin-arm64 ;;
    *) echo "no restate-server package for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
server="$here/node_modules/@restatedev/restate-server-$platform/bin/restate-server"
if [ ! -x "$server" ]; then
    echo "restate-server is missing at $server after npm ci" >&2
    exit 1
fi

# The service, in its own target folder (this crate is not in the workspace).
CARGO_TARGET_DIR="$here/target" nice -n 19 cargo build --release --locked -j "${CARGO_BUILD_JOBS:-1}" \
    --manifest-path "$here/Cargo.toml" >&2
service="$here/target/release/restate-trip"

echo "restate-server: $server ($("$server" --version))"
echo "restate-trip: $service"
