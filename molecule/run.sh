#!/usr/bin/env bash
# Run one Molecule scenario on podman systemd containers: `bash molecule/run.sh default [molecule args]`.
# Sets up what this kind of host needs (docs/roles.md, "Molecule"): a containers.conf with ulimits the
# host allows, cgroup v1 controllers moved off cgroup2, a private mount namespace that sees only cgroup2,
# the containers.podman/ansible.posix/community.general collections unpacked from the `ansible` wheel,
# a frozen copy of the sollol-ops sources, and the base image. Then `molecule test -s SCENARIO` (or the molecule subcommand given in MOLECULE_CMD).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SCENARIO="${1:-default}"
shift || true
VENV_BIN="${VENV_BIN:-$REPO/.venv/bin}"
CACHE="${SOLLOL_CACHE:-$HOME/.cache/sollol-ops}"
COLLECTIONS="$CACHE/collections"
ANSIBLE_WHEEL_VERSION=12.3.0
MOLECULE_CMD="${MOLECULE_CMD:-test}"

[ -d "$REPO/molecule/$SCENARIO" ] || { echo "run.sh: no scenario molecule/$SCENARIO" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (debootstrap, mounts, rootful podman)" >&2; exit 1; }
for tool in podman runc unshare; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done
export PATH="$VENV_BIN:$PATH"

# 0. The hosts reach each other by name: podman must give its networks DNS (with the CNI backend, the dnsname
# plugin). Without it verify fails much later with "Name or service not known"; say so now, in one line.
probe="sollol-dns-probe-$$"
podman network create "$probe" >/dev/null
dns="$(podman network inspect "$probe" --format '{{.DNSEnabled}}')"
podman network rm -f "$probe" >/dev/null
if [ "$dns" != true ]; then
  echo "run.sh: podman networks here have no DNS for container names (backend $(podman info --format '{{.Host.NetworkBackend}}')): install golang-github-containernetworking-plugin-dnsname (CNI) or netavark + aardvark-dns" >&2
  exit 1
fi

# Scenarios may run at once (molecule/all.sh): what they share on this host is set up by one at a time.
mkdir -p "$CACHE"
exec 9>"$CACHE/molecule.lock"
flock 9

# 1. containers.conf: the host's hard limits (nofile 20000, memlock 8 MiB) and runc.
export CONTAINERS_CONF="$CACHE/containers.conf"
conf_tmp="$(mktemp "$CONTAINERS_CONF.XXXXXX")"
cat >"$conf_tmp" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768", "memlock=8388608:8388608"]
pids_limit = 0

[engine]
runtime = "runc"
CONF
chmod 644 "$conf_tmp"
mv "$conf_tmp" "$CONTAINERS_CONF"

# 2. Hybrid cgroup layout: mount every controller still on cgroup2 as a v1 hierarchy, so cgroup2 holds none.
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
  for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
    mountpoint -q "/sys/fs/cgroup/$c" && continue
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
  done
fi

# 3. Collections for the podman driver, from the `ansible` wheel (Galaxy is not reachable).
if [ ! -d "$COLLECTIONS/ansible_collections/containers/podman" ] \
  || [ ! -d "$COLLECTIONS/ansible_collections/ansible/posix" ] \
  || [ ! -d "$COLLECTIONS/ansible_collections/community/general" ]; then
  mkdir -p "$CACHE/downloads" "$COLLECTIONS"
  wheel="$(ls "$CACHE"/downloads/ansible-"$ANSIBLE_WHEEL_VERSION"-py3-none-any.whl 2>/dev/null || true)"
  if [ -z "$wheel" ]; then
    "$VENV_BIN/pip" download -q --no-deps "ansible==$ANSIBLE_WHEEL_VERSION" -d "$CACHE/downloads"
    wheel="$CACHE/downloads/ansible-$ANSIBLE_WHEEL_VERSION-py3-none-any.whl"
  fi
  "$VENV_BIN/python" - "$wheel" "$COLLECTIONS" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
wanted = ("ansible_collections/containers/podman/", "ansible_collections/ansible/posix/",
          "ansible_collections/community/general/")
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(wanted)])
PY
fi
export ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS"

# 4. Freeze the sollol-ops sources for this run: the coordinator role builds its wheelhouse from this copy
#    (molecule.yml: coordinator_source), so edits to the checkout during the run cannot show up as changes in
#    the idempotence step.
export SOLLOL_MOLECULE_SOURCE="$CACHE/molecule/source-$SCENARIO"
rm -rf "$SOLLOL_MOLECULE_SOURCE"
mkdir -p "$SOLLOL_MOLECULE_SOURCE"
tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md sollol_ops roles playbooks | tar -C "$SOLLOL_MOLECULE_SOURCE" -xf -

# 5. Everything podman from here on runs in one private mount namespace that sees only cgroup2.
#    /run/netns (podman's network namespace mounts) is shared with the host, so a later run, in another namespace,
#    can still tear down and remove containers an interrupted run left behind.
mkdir -p /run/netns
if ! grep -q ' /run/netns .* shared:' /proc/self/mountinfo; then
  mountpoint -q /run/netns || mount --bind /run/netns /run/netns
  mount --make-shared /run/netns
fi
export REPO SCENARIO MOLECULE_CMD CACHE
flock -u 9
exec 9>&-
exec unshare -m --propagation unchanged bash -euo pipefail -c '
  mount --make-rprivate /sys
  umount -l /sys/fs/cgroup
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  # The base images the scenario names (localhost/debian<N>-systemd), each built once.
  for release in $(sed -n "s/^ *image: *localhost\/debian\([0-9]*\)-systemd.*/\1/p" "$REPO/molecule/$SCENARIO/molecule.yml" | sort -u); do
    flock "$CACHE/molecule.lock" bash "$REPO/molecule/image/build.sh" "$release"
  done
  # Stale aardvark-dns records of this scenario'"'"'s network (destroy does not always remove them) keep the resolver
  # on an old gateway address, and the containers cannot resolve each other'"'"'s names. Remove containers an aborted
  # run left on the scenario'"'"'s own network, then the file: netavark writes a fresh one for the first new container.
  # Only before a whole `molecule test`: `MOLECULE_CMD=verify` etc. run against the containers a converge left.
  net="$(sed -n "s/^ *network: *\([A-Za-z0-9_.-]*\).*/\1/p" "$REPO/molecule/$SCENARIO/molecule.yml" | head -n1)"
  if [ -n "$net" ] && [ "$MOLECULE_CMD" = test ]; then
    left="$(podman ps -aq --filter "network=$net" 2>/dev/null || true)"
    for c in $left; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
    rm -f "/run/containers/networks/aardvark-dns/$net"
    # A network created before DNS was available keeps DNS off: let molecule create it anew.
    if podman network exists "$net" && [ "$(podman network inspect "$net" --format "{{.DNSEnabled}}")" != true ]; then
      podman network rm -f "$net" >/dev/null
    fi
  fi
  cd "$REPO"
  start=$(date +%s)
  molecule $MOLECULE_CMD -s "$SCENARIO" "$@"
  echo "run.sh: molecule $MOLECULE_CMD -s $SCENARIO passed in $(( $(date +%s) - start )) s"
' run.sh "$@"
