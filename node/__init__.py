"""The lpnode daemon.

Entry points: ``lpnode.node.cli.main`` (the ``lpnode`` command), ``lpnode.node.run.run_node``
(one node process: libp2p host, node logic, model pool, job worker, RPC API) and
``lpnode.node.daemon.serve_node`` (the node logic over any :class:`~lpnode.node.network.base.Network`).
"""
