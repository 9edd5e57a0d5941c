"""``kubectl lpm``, the kubectl plugin (``kubectl-lpm``), over the user's kubeconfig and RBAC.

- ``main``: the command line and exit codes; ``commands``: the subcommands' table and runners;
- ``session``: the kubeconfig, context and default namespace; ``follow``: a migration watched to its end;
- ``progress`` and ``views``: what is printed (pure); ``completion``: shell scripts from the parser (pure);
- ``keep``: checkpoint pins, the collector's ``.keep`` in the shared store.
"""
