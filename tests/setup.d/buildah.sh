#!/usr/bin/env bash
# buildah and debootstrap for the image test (tests/integration/test_image_build.py): buildah
# builds helm/image/Containerfile; debootstrap makes the local Debian base, as no container
# registry is reachable from CI. Idempotent and quiet: skips what is installed.
set -euo pipefail

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
((${#need[@]})) || exit 0
echo "installing Debian packages for the image test: ${need[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" \
  >/dev/null
