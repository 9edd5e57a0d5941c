"""Talking to the Kubernetes API: raw JSON requests, list-then-watch, per-object workers."""
