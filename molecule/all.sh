#!/usr/bin/env bash
# `bash molecule/all.sh SCENARIO...`: run the scenarios side by side (each `molecule/run.sh SCENARIO`), since a
# scenario's time goes to per-task latency of the podman connection more than to CPU. Each one's output goes to
# ~/.cache/sollol-ops/molecule/<scenario>.log and is printed whole once it ends, in the order given; the exit status
# is non-zero when any failed, and the last lines say which. The scenarios must not share container names or
# networks (docs/roles.md, "Molecule").
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
LOGS="${SOLLOL_CACHE:-$HOME/.cache/sollol-ops}/molecule"
[ "$#" -gt 0 ] || { echo "all.sh: name the scenarios (e.g. default debian13 user-scope)" >&2; exit 2; }
mkdir -p "$LOGS"
declare -A pid
for s in "$@"; do
  [ -d "$REPO/molecule/$s" ] || { echo "all.sh: no scenario molecule/$s" >&2; exit 2; }
done
start=$(date +%s)
for s in "$@"; do
  bash "$REPO/molecule/run.sh" "$s" >"$LOGS/$s.log" 2>&1 &
  pid[$s]=$!
  echo ">>> molecule $s started (log $LOGS/$s.log)"
done
failed=()
for s in "$@"; do
  wait "${pid[$s]}"
  rc=$?
  echo ">>> molecule $s: exit $rc"
  cat "$LOGS/$s.log"
  [ "$rc" -eq 0 ] || failed+=("$s")
done
echo ">>> molecule $*: all ended in $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo ">>> molecule: failed: ${failed[*]}" >&2
  exit 1
fi
