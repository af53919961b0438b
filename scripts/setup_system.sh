#!/usr/bin/env bash
# System packages groundloop needs: libusb (open3d), Mesa 25 Vulkan from bookworm-backports (ManiSkill's
# SAPIEN renderer rejects bookworm's Mesa 22), graphviz (graph PNGs), ffmpeg (live-camera tests).
# Idempotent: a stamp file records what was installed; a second run with the stamp present does nothing.
set -euo pipefail

STAMP_DIR="${GROUNDLOOP_STAMP_DIR:-/var/lib/groundloop}"
STAMP="$STAMP_DIR/system-packages.v1"
PACKAGES=(libusb-1.0-0 graphviz ffmpeg)
BACKPORTS_PACKAGES=(mesa-vulkan-drivers libvulkan1)

if [ -f "$STAMP" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

backports_list=/etc/apt/sources.list.d/groundloop-bookworm-backports.sources
if [ ! -f "$backports_list" ]; then
  mirror=$(grep -rhoE 'https?://[^ ]*debian/?$' /etc/apt/sources.list.d/ /etc/apt/sources.list 2>/dev/null \
           | grep -v security | head -n 1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  $SUDO tee "$backports_list" > /dev/null <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"
$SUDO mkdir -p "$STAMP_DIR"
$SUDO touch "$STAMP"
