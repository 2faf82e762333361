#!/usr/bin/env bash
# Controller side of roles/coordinator: wheelhouse.sh WHEEL WHEELHOUSE PYTHON
# Builds WHEELHOUSE/<key>.tar, the sollol-ops WHEEL and every dependency as wheels, once per wheel: the key is
# the first 12 hex digits of the wheel's sha256, so the same wheel gives the same tarball (and no change), and
# the coordinator installs from it without an index.
# Last line of stdout: "<key> built" or "<key> cached".
set -euo pipefail
export LC_ALL=C

wheel="$1" wheelhouse="$2" python="$3"
case "$wheel" in
  *.whl) ;;
  *) echo "wheelhouse.sh: $wheel is not a wheel (*.whl)" >&2; exit 2 ;;
esac
if [ ! -f "$wheel" ]; then
  echo "wheelhouse.sh: $wheel does not exist" >&2
  exit 2
fi
mkdir -p "$wheelhouse"
hash="$(sha256sum "$wheel" | cut -c1-12)"
tarball="$wheelhouse/$hash.tar"
if [ -s "$tarball" ]; then
  echo "$hash cached"
  exit 0
fi
out="$(mktemp -d "$wheelhouse/.wheels.XXXXXX")"
trap 'rm -rf "$out"' EXIT
"$python" -m pip wheel -q --disable-pip-version-check -w "$out" "$wheel" >&2
tar -C "$out" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$hash built"
