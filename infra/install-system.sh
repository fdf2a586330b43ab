#!/usr/bin/env bash
# Installs the Debian packages that the tests and the demo need, only when missing
# (chromium: the report test opens the page in headless Chromium).
# Non-interactive; safe to run again (a no-op once everything is there).
set -euo pipefail
packages=(radosgw ceph-mon ceph-osd ceph-common dataset-fashion-mnist chromium)
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
