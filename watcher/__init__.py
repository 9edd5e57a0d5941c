"""lpm's node agent: checkpoint archives in, committed checkpoints in the shared store out."""
