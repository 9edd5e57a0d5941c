"""Watching the kubelet checkpoint directory for finished archives."""
