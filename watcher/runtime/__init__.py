"""The node's container runtime: what it is, and whether it can restore a checkpoint here."""
