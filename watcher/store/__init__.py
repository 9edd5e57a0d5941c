"""The shared checkpoint store: layout, commit protocol, catalog, retrieval."""
