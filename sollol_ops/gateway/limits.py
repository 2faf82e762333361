"""What the gateway adds to a request before forwarding it: a token limit where the client set none
(`--default-num-predict`), and the 501 for embeddings of a sharded model the inventory did not enable.

Open WebUI sends its chat tasks without a token limit; llama-server's own default is to generate until the
slot's context is full (minutes on a sharded model), where Ollama's generation is bounded by its context window
(num_ctx, a few thousand tokens by default). A request that names no limit (Ollama: no `options.num_predict`;
OpenAI: neither `max_tokens` nor `max_completion_tokens`) gets DEFAULT_NUM_PREDICT, unless the gateway's
`--default-num-predict` / the inventory's `sollol_gateway_default_num_predict` says otherwise (0: no limit).
An explicit limit, including Ollama's -1 (no limit), is left as the client set it.
"""

from __future__ import annotations

from typing import Any

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.gateway.errors import ApiError

DEFAULT_NUM_PREDICT = int(str(cluster_vars.GATEWAY_DEFAULTS["sollol_gateway_default_num_predict"]))
EMBEDDINGS_VAR = "sollol_embeddings"


def default_limit(body: dict[str, Any], api: str, limit: int) -> bool:
    """Set `limit` as the request's token limit when it has none (api: ollama | openai); True when set."""
    if limit <= 0:
        return False
    if api == "ollama":
        options = body.setdefault("options", {})
        if options is None:
            options = body["options"] = {}
        if not isinstance(options, dict) or options.get("num_predict") is not None:
            return False  # not an object: translate.options refuses it with a 400
        options["num_predict"] = limit
        return True
    if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
        return False
    body["max_tokens"] = limit
    return True


def refuse_shard_embeddings(route: str, enabled: bool) -> None:
    """ApiError 501 for embeddings of a sharded model when the inventory did not ask for them."""
    if route == "shard" and not enabled:
        raise ApiError(
            501,
            f"embeddings of a sharded model are off: set {EMBEDDINGS_VAR}: true in the inventory (cluster-wide) "
            "so the coordinator's llama-server runs with --embeddings, then reload the model",
            route="shard",
            node="coordinator",
        )
