"""`sollol-ops gateway`: one HTTP endpoint speaking the Ollama and OpenAI APIs, routing each request by
model to a pool of Ollama / OpenAI-compatible nodes or to the sharded coordinator (docs/gateway.md).

Modules: `app` (the ASGI application: the parts wired, the routes table), `routing` (which upstream serves a
model), `auth` (the API key), `bodies` (request bodies and their limit), `call` (one request's book-keeping),
`upstream` (failover before the first byte, relays without buffering), `ollama_routes` and `openai_routes`
(the model routes of each API), `loading` (waiting for a sharded model, its progress), `listings` (tags, ps,
show, /v1/models), `status` (status and gauges), `translate` and `streams` (Ollama <-> OpenAI requests and
streams), `pool` (nodes, health checks, breaker, least-outstanding choice), `catalog` (the coordinator's store
and its running model), `ondemand` (sharded models loaded on demand), `ondemand_status` (its phases and
status), `keepalive` (keep_alive durations), `metrics` (Prometheus), `server` (uvicorn).
"""
