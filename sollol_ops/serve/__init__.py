"""Serving: the coordinator (one persistent llama-server over the cluster's rpc-servers) and its state."""
