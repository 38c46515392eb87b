#!/usr/bin/env bash
# Install everything the tests need, then run them all. This is the README's test command and
# what CI (.ci/run) calls, so a missing install step fails here first.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
  || need_apt+=(prometheus-alertmanager)
if ((${#need_apt[@]})); then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

# Everything Python lives in .venv: Debian's own Python refuses installs outside a venv.
bash scripts/venv.sh dev
export PATH="$PWD/.venv/bin:$PATH"

# Extra test tools that later parts of the stack bring (helm, ...) are installed by their scripts.
for setup in tests/setup.d/*.sh; do
  [ -e "$setup" ] && bash "$setup"
done

# In parallel (pytest-xdist), one test module per worker at a time so that a module's shared
# Prometheus or image build is set up once. More workers than cores: the long tests mostly wait on
# Prometheus' scrape and `for:` intervals. KVSCOPE_TEST_WORKERS=0 runs everything in one process.
workers="${KVSCOPE_TEST_WORKERS:-4}"
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
.venv/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@"
