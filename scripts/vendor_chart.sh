#!/usr/bin/env bash
# Vendor Chart.js into rstscope/api/static/vendor: the dashboard must work offline (no CDN at run time).
# The tarball comes from the npm registry by `npm pack`; its sha256 and the bundle's sha256 are pinned
# here, so a changed upstream artifact fails loudly instead of being shipped.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=chart.js
VERSION=4.6.1
TARBALL_SHA256=9345dacdf4bb4c5d40321f4b9aafab6fe676d37a534fc0bc2d17c4c4e29c4f00
BUNDLE_SHA256=87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2
DEST=rstscope/api/static/vendor

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NAME@$VERSION" >/dev/null)
tgz="$work/$NAME-$VERSION.tgz"
echo "$TARBALL_SHA256  $tgz" | sha256sum -c --quiet -
tar -xzf "$tgz" -C "$work" package/dist/chart.umd.min.js package/LICENSE.md
echo "$BUNDLE_SHA256  $work/package/dist/chart.umd.min.js" | sha256sum -c --quiet -
mkdir -p "$DEST"
cp "$work/package/dist/chart.umd.min.js" "$DEST/chart.umd.min.js"
cp "$work/package/LICENSE.md" "$DEST/chart.js.LICENSE.md"
echo "vendored $NAME $VERSION into $DEST"
