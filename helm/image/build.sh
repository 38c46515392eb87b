#!/usr/bin/env bash
# Build the kvscope image with buildah, from a wheelhouse made on this host (no network in the
# image build).
#
#   bash helm/image/build.sh [--tag NAME:TAG] [--base IMAGE | --local-base] [--python PY]
#                            [--extras LIST]
#
#   --tag NAME:TAG   image name (default kvscope:<version from pyproject.toml>)
#   --base IMAGE     base image with python3 and venv (default python:3.11-slim-bookworm)
#   --local-base     make the base here instead: Debian bookworm by debootstrap (minbase plus
#                    python3, python3-venv), imported FROM scratch, for hosts that reach no
#                    container registry. Kept as localhost/kvscope-base:bookworm and reused.
#   --python PY      the Python that builds the wheelhouse; its minor version must equal the
#                    base's (default: .venv/bin/python if present, else python3)
#   --extras LIST    kvscope extras to install (default "rdma": pyverbs for RDMA device limits
#                    and the QP probe; "" for none)
#
# Storage driver and isolation default to vfs and chroot, which work inside containers and on CI
# machines without overlayfs or user namespaces; override with
# BUILDAH_STORAGE_DRIVER and BUILDAH_ISOLATION. Push afterwards with `buildah push NAME:TAG
# docker://<registry>/<name>:<tag>` (README, "Deploy").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

die() { echo "build.sh: $*" >&2; exit 1; }

tag=""
base="python:3.11-slim-bookworm"
local_base=0
python=""
extras="rdma"
while (($#)); do
  case "$1" in
    --tag) tag="${2:?--tag needs NAME:TAG}"; shift 2 ;;
    --base) base="${2:?--base needs an image}"; shift 2 ;;
    --local-base) local_base=1; shift ;;
    --python) python="${2:?--python needs a path}"; shift 2 ;;
    --extras) extras="${2?--extras needs a list, or \"\" for none}"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
if [ -z "$python" ]; then
  python=python3
  [ -x .venv/bin/python ] && python=.venv/bin/python
fi
command -v buildah >/dev/null || die "buildah is not installed (Debian: apt-get install buildah)"
export STORAGE_DRIVER="${BUILDAH_STORAGE_DRIVER:-vfs}"
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
[ -n "$tag" ] || tag="kvscope:$version"
wheel_python="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# The local base: one debootstrap, cached as an image in buildah's storage.
local_base_image=localhost/kvscope-base:bookworm
make_local_base() {
  if buildah inspect --type image "$local_base_image" >/dev/null 2>&1; then
    return
  fi
  command -v debootstrap >/dev/null \
    || die "--local-base needs debootstrap (Debian: apt-get install debootstrap)"
  local rootfs mirror
  rootfs="$(mktemp -d)"
  # The host's own Debian mirror, so that a machine with a local mirror uses it; else
  # debootstrap's default.
  mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
            | grep -v security | head -n1 || true)"
  echo "build.sh: debootstrap bookworm (minbase + python3, python3-venv) into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" ${mirror:+"$mirror"} \
    >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  # Package lists and caches are of no use in an image that never runs apt.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  local ctx
  ctx="$(mktemp -d)"
  tar -C "$rootfs" -cf "$ctx/rootfs.tar" .
  rm -rf "$rootfs" "$rootfs.log"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' >"$ctx/Containerfile"
  buildah bud --quiet --layers=false -f "$ctx/Containerfile" -t "$local_base_image" "$ctx" >/dev/null
  rm -rf "$ctx"
}
if ((local_base)); then
  make_local_base
  base="$local_base_image"
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
echo "build.sh: wheelhouse for Python $wheel_python"
"$python" -m pip wheel --quiet --disable-pip-version-check ".${extras:+[$extras]}" -w "$ctx/wheels" \
  || die "pip wheel failed: the wheelhouse needs kvscope's dependencies from your package index"
cp "$here/Containerfile" "$ctx/Containerfile"

revision="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
source_url="$(git remote get-url origin 2>/dev/null | grep "^https://" || true)"
echo "build.sh: building $tag from $base"
buildah bud --quiet --layers=false \
  --build-arg "BASE_IMAGE=$base" \
  --build-arg "WHEEL_PYTHON=$wheel_python" \
  --build-arg "EXTRAS=$extras" \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" \
  --build-arg "SOURCE=$source_url" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
echo "build.sh: built $tag"
