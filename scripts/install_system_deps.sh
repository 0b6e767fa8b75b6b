#!/usr/bin/env bash
# System pieces that itmatch's own-pictures code needs, fetched from Debian's archive. Idempotent.
#
#  * libcairo2 (used by cairosvg to render SVG): `apt-get install` when root and missing.
#  * chromium (the web page's browser test), with --browser only (`make test`): `apt-get install` when root and
#    missing. `make demo` does not install it.
#  * tuxpaint-stamps-default and openclipart-svg (the Tux Paint data set and its --with-openclipart extra):
#    fetched without root by `apt-get download` and unpacked by `dpkg-deb -x` into the same cache that
#    `itmatch data build tuxpaint` uses: ${ITMATCH_CACHE:-~/.cache/itmatch}/debian/PACKAGE/
#    (the unpacked tree, plus a VERSION file written last, which marks it complete).
#
# Usage: scripts/install_system_deps.sh [PACKAGE ...]   (default: both data packages)
#        scripts/install_system_deps.sh --browser         (Chromium only)
set -euo pipefail

cache="${ITMATCH_CACHE:-${HOME}/.cache/itmatch}/debian"
browser=0
if [ "${1:-}" = "--browser" ]; then browser=1; shift; fi
packages=("$@")
[ ${#packages[@]} -eq 0 ] && packages=(tuxpaint-stamps-default openclipart-svg)

as_root() { [ "$(id -u)" -eq 0 ]; }
apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ] && as_root; then apt-get update -qq; apt_updated=1; fi
}

# Chromium for the web page's browser test (driven by Playwright's Python package; no browser download).
if [ "$browser" -eq 1 ]; then
  if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed"
  elif as_root; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "warning: /usr/bin/chromium is missing and this is not root: the browser test is skipped (apt-get install chromium)" >&2
  fi
  exit 0
fi

if ! ldconfig -p 2>/dev/null | grep -q 'libcairo\.so\.2'; then
  if as_root; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcairo2
  else
    echo "warning: libcairo2 is missing and this is not root: SVG pictures will not render (apt-get install libcairo2)" >&2
  fi
fi

mkdir -p "$cache"
for pkg in "${packages[@]}"; do
  dest="$cache/$pkg"
  if [ -f "$dest/VERSION" ]; then
    echo "$pkg $(cat "$dest/VERSION") already in $dest"
    continue
  fi
  work="$(mktemp -d "$cache/.$pkg.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  # apt-get download needs package lists; refresh them when we can and the package is not yet known.
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then apt_update; fi
  sandbox=(); as_root && sandbox=(-o APT::Sandbox::User=root)
  (cd "$work" && apt-get download -qq "${sandbox[@]}" "$pkg")
  deb="$(ls "$work"/*.deb)"
  mkdir "$work/root"
  dpkg-deb -x "$deb" "$work/root"
  dpkg-deb -f "$deb" Version >"$work/root/VERSION"
  rm -rf "$dest"
  mv "$work/root" "$dest"
  rm -rf "$work"
  trap - EXIT
  echo "$pkg $(cat "$dest/VERSION") unpacked into $dest"
done
