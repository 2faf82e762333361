#!/usr/bin/env bash
# `build.sh [RELEASE]`: build localhost/debian<RELEASE>-systemd:latest (RELEASE 12, the default, or 13), a systemd
# base image of the Molecule scenarios, without a registry: debootstrap a minimal Debian of that release from the
# Debian mirror apt already uses, then `podman import` it. The rootfs tarball is cached under
# ~/.cache/sollol-ops/image/; nothing happens when the image exists. Run it inside the same mount namespace as
# the scenarios (molecule/run.sh does, for each image a scenario names) or on its own as root.
set -euo pipefail

RELEASE="${1:-12}"
case "$RELEASE" in
  12) SUITE=bookworm ;;
  13) SUITE=trixie ;;
  *) echo "build.sh: no Debian release $RELEASE here (12 or 13)" >&2; exit 2 ;;
esac
IMAGE="localhost/debian$RELEASE-systemd:latest"
CACHE="${SOLLOL_IMAGE_CACHE:-$HOME/.cache/sollol-ops/image}"
# Bump when PACKAGES change, so a stale cached tarball is not reused.
REVISION=2
# libgomp1: runtime library of the llama.cpp binaries (roles/llama_cpp does not install it yet).
PACKAGES=libgomp1,systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,python3,python3-venv,sudo,openssh-server,iproute2,nftables,procps,ca-certificates
TARBALL="$CACHE/debian$RELEASE-systemd-r$REVISION.tar.gz"

if podman image exists "$IMAGE" \
  && [ "$(podman image inspect --format '{{ index .Config.Labels "sollol.revision" }}' "$IMAGE")" = "$REVISION" ]; then
  echo "image $IMAGE (revision $REVISION) exists"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "build.sh: debootstrap needs root" >&2
  exit 1
fi

mirror() {
  # First URIs: of a deb822 .sources stanza that serves a Debian release suite (a plain codename, not -security or
  # -updates): the same mirror serves every release. No host name is hard-coded here.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk '
      /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i ~ /^(bookworm|trixie|forky)$/) ok = 1 }
      END { if (uri != "" && ok) print uri }' "$f"
  done | head -n1
}

if [ ! -s "$TARBALL" ]; then
  MIRROR="$(mirror)"
  if [ -z "$MIRROR" ]; then
    echo "build.sh: no Debian mirror in /etc/apt/sources.list.d/*.sources" >&2
    exit 1
  fi
  command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  mkdir -p "$CACHE"
  ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  echo "debootstrap $SUITE from $MIRROR (1-2 min)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap-$SUITE.log" 2>&1 \
    || { echo "build.sh: debootstrap failed, see $CACHE/debootstrap-$SUITE.log" >&2; exit 1; }
  : >"$ROOTFS/etc/machine-id"
  rm -f "$ROOTFS/var/lib/dbus/machine-id"
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar -C "$ROOTFS" --numeric-owner -czf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL sollol.revision=$REVISION" \
  "$TARBALL" "$IMAGE" >/dev/null
echo "imported $IMAGE from $TARBALL"
