#!/usr/bin/env bash
# Controller side of roles/coordinator: wheelhouse.sh WHEEL WHEELHOUSE PYTHON [TARGET_PY MACHINE GLIBC]
# Builds WHEELHOUSE/<key>.tar, the sollol-ops WHEEL and every dependency as wheels, once per wheel and target: the
# key is the first 12 hex digits of the wheel's sha256, so the same wheel gives the same tarball (and no change),
# and the coordinator installs from it without an index.
# The target is the coordinator's Python (3.13), machine (x86_64) and glibc (2.41). When its Python or machine is not
# the controller's PYTHON's (a Debian 13 coordinator, Python 3.13, provisioned from Debian 12, 3.11), compiled
# dependencies (PyYAML, numpy, ...) must be wheels for the coordinator: they are downloaded for its tags (binary
# wheels only: nothing can be compiled for another interpreter here), and the key gets "-cp313-x86_64-2.41".
# Last line of stdout: "<key> built" or "<key> cached".
set -euo pipefail
export LC_ALL=C

wheel="$1" wheelhouse="$2" python="$3" target_py="${4:-}" machine="${5:-}" glibc="${6:-}"
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
here="$("$python" -c 'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}")')"
cross=""
if [ -n "$target_py" ] && [ "$target_py $machine" != "$here" ]; then
  if ! [[ "$target_py" =~ ^3\.[0-9]+$ && "$machine" =~ ^[A-Za-z0-9_]+$ && "$glibc" =~ ^2\.[0-9]+$ ]]; then
    echo "wheelhouse.sh: target '$target_py $machine $glibc' is not 'PYTHON_VERSION MACHINE GLIBC' (3.13 x86_64 2.41)" >&2
    exit 2
  fi
  cross="cp${target_py/./}"
  hash="$hash-$cross-$machine-$glibc"
fi
tarball="$wheelhouse/$hash.tar"
if [ -s "$tarball" ]; then
  echo "$hash cached"
  exit 0
fi
out="$(mktemp -d "$wheelhouse/.wheels.XXXXXX")"
trap 'rm -rf "$out" "${tmp_tar:-}"' EXIT
if [ -z "$cross" ]; then
  "$python" -m pip wheel -q --disable-pip-version-check -w "$out" "$wheel" >&2
else
  # Every manylinux tag the coordinator's glibc runs (manylinux_2_17 = manylinux2014, ...), newest first.
  platforms=()
  for ((minor = ${glibc#2.}; minor >= 17; minor--)); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
  platforms+=(--platform "manylinux2014_$machine")
  "$python" -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$out" \
    --python-version "$target_py" --implementation cp --abi "$cross" "${platforms[@]}" "$wheel" >&2 \
    || { echo "wheelhouse.sh: no wheels of sollol-ops' dependencies for Python $target_py on $machine (glibc $glibc): install the coordinator's Python version on the controller and provision from it" >&2; exit 1; }
fi
# A private temporary name, then one rename: two runs for the same key (at once) both end with a whole tarball.
tmp_tar="$(mktemp "$wheelhouse/.$hash.XXXXXX")"
tar -C "$out" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$tmp_tar" .
chmod 644 "$tmp_tar"
mv "$tmp_tar" "$tarball"
echo "$hash built"
