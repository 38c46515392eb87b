#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install kvscope into it.
# Debian's own Python refuses `pip install` outside a venv (externally-managed-environment), and
# a fresh Debian has no `venv` module until python3-venv is installed, so this installs it first.
# Usage: bash scripts/venv.sh [EXTRAS]   e.g. `bash scripts/venv.sh dev` for the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "installing Debian package: python3-venv"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    python3-venv >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
