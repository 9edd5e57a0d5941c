"""Turning kubelet archives into committed checkpoints."""
