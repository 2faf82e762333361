"""sollol-ops: serve one LLM sharded across llama.cpp RPC workers provisioned by Ansible."""

__version__ = "0.1.0"
