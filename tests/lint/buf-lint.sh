#!/bin/sh
# buf-lint.sh - lints the project's protobuf contracts (proto/hospitality/**) with buf, offline.
#
# proto/buf.yaml takes google/api and google/rpc from the Buf Schema Registry, which needs the
# network. This script lints the same files with the same rules without it: it builds a
# throwaway buf workspace laid out like proto/ (our files at the root, googleapis from Debian's
# golang-github-grpc-ecosystem-grpc-gateway-dev under third_party/, as a second module that is
# only imported, never linted), copies the lint and breaking sections of proto/buf.yaml into
# it, and runs `buf lint`.
#
# buf is taken from $HM_BUF if set, else tests/interop/node_modules/.bin/buf (npm install in
# tests/interop), else `npx --yes @bufbuild/buf@1.75.0`.
#
# Exit status: 0 when clean; buf's status (non-zero) with its messages on stderr/stdout
# otherwise; 2 when the set-up itself fails.
set -eu

BUF_VERSION=1.75.0
repo=$(cd "$(dirname "$0")/../.." && pwd)
googleapis=${HM_GOOGLEAPIS_DIR:-/usr/share/gocode/src/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis}

die() {
    echo "buf-lint: $*" >&2
    exit 2
}

[ -f "$repo/proto/buf.yaml" ] || die "no proto/buf.yaml under $repo"
[ -d "$repo/proto/hospitality" ] || die "no proto/hospitality under $repo"
[ -f "$googleapis/google/api/annotations.proto" ] ||
    die "googleapis not found at $googleapis (install golang-github-grpc-ecosystem-grpc-gateway-dev or set HM_GOOGLEAPIS_DIR)"

if [ -n "${HM_BUF:-}" ]; then
    set -- "$HM_BUF"
elif [ -x "$repo/tests/interop/node_modules/.bin/buf" ]; then
    set -- "$repo/tests/interop/node_modules/.bin/buf"
elif command -v npx >/dev/null 2>&1; then
    set -- npx --yes "@bufbuild/buf@$BUF_VERSION"
else
    die "no buf: run 'npm install' in tests/interop, set HM_BUF, or install npx"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hm-buf-lint.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ws="$tmp/ws"
mkdir -p "$ws/third_party" "$tmp/cache"
ln -s "$repo/proto/hospitality" "$ws/hospitality"
ln -s "$googleapis" "$ws/third_party/googleapis"

# The workspace config: our module at the root (as in proto/), googleapis as an import-only
# module, then proto/buf.yaml's top-level lint: and breaking: blocks verbatim, so lint rules and
# ignore paths (relative to proto/) mean the same here.
{
    echo "version: v2"
    echo "modules:"
    echo "  - path: ."
    echo "    excludes:"
    echo "      - third_party"
    echo "  - path: third_party/googleapis"
    awk '/^[^ #]/ { keep = ($1 == "lint:" || $1 == "breaking:") } keep' "$repo/proto/buf.yaml"
} >"$ws/buf.yaml"
grep -q '^lint:' "$ws/buf.yaml" || die "proto/buf.yaml has no top-level lint: section"

# Lint only our files; googleapis is there to resolve imports.
status=0
(cd "$ws" && BUF_CACHE_DIR="$tmp/cache" "$@" lint --path hospitality) || status=$?
if [ "$status" -ne 0 ]; then
    echo "buf-lint: buf lint failed (status $status)" >&2
fi
exit "$status"
