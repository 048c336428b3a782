#!/usr/bin/env bash
# Builds the Debian package libnginx-mod-http-sse_<version>_<arch>.deb for Debian 12's nginx
# (docs/installing.md): installs the build dependencies that debian/control names, then runs
# "dpkg-buildpackage -us -uc -b" on a copy of this tree in build/deb/, so the work tree stays
# clean. The packages land in build/deb/; the script prints the path of the module's .deb last.
# The version is debian/changelog's.
#   DEB_BUILD_OPTIONS=nocheck scripts/package.sh   skips the package's own check that
#                                                  /usr/sbin/nginx loads the built .so
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

source scripts/deps.sh
apt_install dpkg-dev debhelper
# The build dependencies, as debian/control lists them (nginx-dev provides dh-sequence-nginx).
if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { dpkg-checkbuilddeps; echo "run as root to install them" >&2; exit 1; }
    if [ -z "${SSE_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2
        export SSE_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends ./ >&2
fi

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
out="$repo/build/deb"
tree="$out/libnginx-mod-http-sse-$version"
rm -rf "$out"
mkdir -p "$tree"
# The tree as it is (uncommitted changes included), without build output or installed packages.
tar -cf - --exclude=./.git --exclude=./build --exclude=node_modules --exclude='./obj-*' . | tar -xf - -C "$tree"

export DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }parallel=$(nproc)"
(cd "$tree" && nice -n 10 dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1 || {
    tail -40 "$out/build.log"; echo "dpkg-buildpackage failed: $out/build.log" >&2; exit 1; }

deb="$out/libnginx-mod-http-sse_${version}_${arch}.deb"
[ -f "$deb" ] || { echo "no $deb (see $out/build.log)" >&2; exit 1; }
rm -rf "$tree"
echo "built $(ls "$out"/*.deb | tr '\n' ' ')" >&2
echo "$deb"
