"""`sollol-ops gateway`: one HTTP endpoint speaking the Ollama and OpenAI APIs, routing each request by
model to a pool of Ollama / OpenAI-compatible nodes or to the sharded coordinator (docs/gateway.md).

Modules: `translate` (Ollama <-> OpenAI requests and streams), `pool` (nodes, health checks, breaker,
least-outstanding choice), `catalog` (the coordinator's store and its running model), `router` (which
route serves a model), `metrics` (Prometheus), `app` (the ASGI application), `server` (uvicorn).
"""
