#!/usr/bin/env bash
# Controller side of roles/coordinator: wheelhouse.sh SOURCE WHEELHOUSE PYTHON
# Snapshots what goes into the sollol-ops wheel (pyproject.toml, README.md, the package's source files) from the
# checkout SOURCE, fingerprints the snapshot, and builds WHEELHOUSE/<fingerprint>.tar (sollol-ops and all its
# dependencies as wheels) from that same snapshot, once per fingerprint. The fingerprint covers file names and
# contents only (no mtimes, C collation), so it is stable across runs and machines, and the tarball always holds
# exactly the sources it is named after, even while the checkout is being edited.
# Last line of stdout: "<fingerprint> built" or "<fingerprint> cached".
set -euo pipefail
export LC_ALL=C

src="$1" wheelhouse="$2" python="$3"
mkdir -p "$wheelhouse"
snap="$(mktemp -d "$wheelhouse/.src.XXXXXX")"
out="$(mktemp -d "$wheelhouse/.wheels.XXXXXX")"
trap 'rm -rf "$snap" "$out"' EXIT

cd "$src"
{
  for f in pyproject.toml README.md LICENSE LICENSE.txt; do
    [ -f "$f" ] && printf '%s\0' "$f"
  done
  find sollol_ops -name __pycache__ -prune -o -type f \
    \( -name '*.py' -o -name '*.pyi' -o -name 'py.typed' -o -name '*.json' -o -name '*.toml' -o -name '*.j2' \
       -o -name '*.yml' -o -name '*.yaml' -o -name '*.txt' \) -print0
} | tar --null -T - -cf - | tar -C "$snap" -xf -

hash="$(cd "$snap" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)"
tarball="$wheelhouse/$hash.tar"
if [ -s "$tarball" ]; then
  echo "$hash cached"
  exit 0
fi

"$python" -m pip wheel -q --disable-pip-version-check -w "$out" "$snap" >&2
tar -C "$out" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$hash built"
