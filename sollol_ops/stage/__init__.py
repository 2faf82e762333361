"""Staging: each worker's share of a model's weights put into its rpc-server cache ahead of the first load."""
