"""The destination's half: a verified checkpoint becomes an image the node's runtime restores."""
