"""State tracker: what the node's containerd holds, over its gRPC API."""
