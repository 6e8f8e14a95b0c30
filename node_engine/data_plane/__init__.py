"""The node-to-node tensor data plane: :mod:`.server` (ROUTER per node) and :mod:`.client`."""
