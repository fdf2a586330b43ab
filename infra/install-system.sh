#!/usr/bin/env bash
# Installs the Debian packages that the demo or the tests need, only when missing.
#   bash infra/install-system.sh demo   Fashion-MNIST (the demo's data)
#   bash infra/install-system.sh        everything the tests need: also Ceph's S3 gateway (the
#                                       integration tests) and Chromium (the report test opens the page)
# Non-interactive; safe to run again (a no-op once everything is there).
set -euo pipefail
case "${1:-test}" in
  demo) packages=(dataset-fashion-mnist) ;;
  test) packages=(radosgw ceph-mon ceph-osd ceph-common dataset-fashion-mnist chromium) ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
