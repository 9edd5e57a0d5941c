"""lpm's checkpoint store collector (imported as ``lpm_gc``: the built-in ``gc`` always wins).

One module per concern, from the bottom up:

- ``entries``: the compact record of one thing in the store (a tuple per checkpoint);
- ``scanner``: reads the store into entries, never following a link;
- ``planner``: pure ``plan(entries, policy, now)`` -> deletions with reasons;
- ``runner``: deletes one planned entry after a last look (pin, marker, fresh writes);
- ``lock`` / ``lease``: one collector deletes at a time (lock file standalone, Lease in a cluster);
- ``references``: does an lpm API object still reference a checkpoint? yes / no / unknown;
- ``kubelet``: removes kubelet archives the ingest ledger vouches for;
- ``metrics``: Prometheus metrics and store usage;
- ``collector``: one pass and the loop of passes; ``cluster``: the Kubernetes client wiring;
- ``cli``: ``lpm gc``.
"""
