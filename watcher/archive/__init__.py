"""Reading kubelet checkpoint archives: names, tar structure, identity."""
