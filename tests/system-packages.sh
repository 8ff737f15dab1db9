#!/usr/bin/env bash
# Debian packages the build needs beyond Rust: cmake and nasm build the bundled libjpeg-turbo (the
# `turbojpeg` crate, img2dataset's JPEG decoding). Idempotent; uses sudo when not root.
set -euo pipefail
PACKAGES=(cmake nasm)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "== installing ${missing[*]} (apt)"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
