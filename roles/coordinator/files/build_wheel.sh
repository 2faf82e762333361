#!/usr/bin/env bash
# Controller side of roles/coordinator: build_wheel.sh SOURCE OUTDIR PYTHON
# Builds the sollol-ops wheel of the checkout SOURCE once per source state. Snapshots what goes into the wheel
# (pyproject.toml, README.md, the package with its links to roles/ and playbooks/, and those two trees) into a
# scratch directory, fingerprints the snapshot (file names, contents and link targets only, C collation, no mtimes:
# stable across runs and machines) and builds OUTDIR/src-<fingerprint>/sollol_ops-*.whl from that same snapshot,
# so the wheel always holds exactly the sources it is named after, even while the checkout is being edited, and
# the checkout gets no build/ or *.egg-info.
# Last line of stdout: "built PATH" or "cached PATH".
set -euo pipefail
export LC_ALL=C

src="$1" outdir="$2" python="$3"
if [ ! -f "$src/pyproject.toml" ] || [ ! -d "$src/sollol_ops" ]; then
  echo "build_wheel.sh: $src is not a sollol-ops checkout (no pyproject.toml and sollol_ops/)" >&2
  exit 2
fi
mkdir -p "$outdir"
snap="$(mktemp -d "$outdir/.src.XXXXXX")"
out="$(mktemp -d "$outdir/.wheel.XXXXXX")"
trap 'rm -rf "$snap" "$out"' EXIT

cd "$src"
files=(pyproject.toml sollol_ops)
for f in README.md LICENSE LICENSE.txt roles playbooks; do
  if [ -e "$f" ]; then files+=("$f"); fi
done
tar --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - "${files[@]}" | tar -C "$snap" -xf -
if [ ! -f "$snap/sollol_ops/ansible/playbooks/site.yml" ] || [ ! -d "$snap/sollol_ops/ansible/roles/coordinator" ]; then
  echo "build_wheel.sh: $src lacks the playbooks and roles the wheel carries (sollol_ops/ansible/ links to roles/ and playbooks/)" >&2
  exit 2
fi

hash="$(cd "$snap" && {
  find . -type f -print0 | sort -z | xargs -0 sha256sum
  find . -type l -print0 | sort -z | xargs -0 -r -n1 sh -c 'printf "%s -> %s\n" "$1" "$(readlink "$1")"' link
} | sha256sum | cut -c1-12)"
dest="$outdir/src-$hash"
for wheel in "$dest"/sollol_ops-*.whl; do
  if [ -f "$wheel" ]; then
    echo "cached $wheel"
    exit 0
  fi
done

"$python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$out" "$snap" >&2
# Into place in one rename: builds of the same source may run at once (Molecule scenarios side by side); the first
# one's directory stays, and a directory left without a wheel (an interrupted older layout) is replaced.
staged="$(mktemp -d "$outdir/.dest.XXXXXX")"
trap 'rm -rf "$snap" "$out" "$staged"' EXIT
mv "$out"/sollol_ops-*.whl "$staged"/
chmod 755 "$staged"
if [ -d "$dest" ] && ! compgen -G "$dest/sollol_ops-*.whl" >/dev/null; then rm -rf "$dest"; fi
mv -T "$staged" "$dest" 2>/dev/null || true
for wheel in "$dest"/sollol_ops-*.whl; do
  echo "built $wheel"
done
