"""The cluster: the inventory, the RPC protocol and links, placement, the toolchain, provisioning and checks."""
