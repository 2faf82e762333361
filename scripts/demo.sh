#!/usr/bin/env bash
# `make demo`: serve SmolLM2-135M sharded across two local rpc-servers, ask it one question,
# show where the layers went. Re-running reuses what is already up. DEMO_STOP=1 stops everything after.
set -euo pipefail
S="${SOLLOL_OPS:-sollol-ops}"
PORT="${DEMO_PORT:-8080}"
STATE="${XDG_STATE_HOME:-$HOME/.local/state}/sollol-ops"
INV="$STATE/local/inventory.ini"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "toolchain"
"$S" toolchain

step "model store ($OLLAMA_MODELS)"
"$S" models

alive() { "$S" local status --json | python3 -c 'import json,sys; sys.exit(0 if any(json.load(sys.stdin)["alive"]) else 1)'; }
if alive; then
  step "two local rpc-servers (already running)"
else
  step "starting two local rpc-servers"
  "$S" local start 2
fi
"$S" -i "$INV" backends

step "sollol-ops up smollm2:135m"
"$S" -i "$INV" up smollm2:135m --port "$PORT" --ctx-size 2048

step "one chat completion through the OpenAI-compatible endpoint (http://127.0.0.1:$PORT/v1)"
echo "Q: What is the capital of France? Answer in one short sentence."
echo "A: $("$S" ask --max-tokens 48 'What is the capital of France? Answer in one short sentence.')"

step "status"
"$S" -i "$INV" status

if [ "${DEMO_STOP:-0}" = "1" ]; then
  step "stopping"
  "$S" down
  "$S" local stop
else
  echo
  echo "Still running. Try:  .venv/bin/sollol-ops ask 'Tell me a joke'"
  echo "Stop with:           make demo-stop   (sollol-ops down && sollol-ops local stop)"
fi
