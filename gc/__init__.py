"""lpm's checkpoint store collector (imported as ``lpm_gc``: the built-in ``gc`` always wins)."""
