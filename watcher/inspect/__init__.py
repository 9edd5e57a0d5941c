"""``lpm inspect``: what a checkpoint holds, read from the archive or the store without restoring it."""
