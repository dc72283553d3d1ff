"""The network as node logic sees it (``base.Network``) and its two implementations:
real libp2p (``libp2p.open_libp2p_network``) and an in-memory hub in virtual time
(``memory.open_memory_hub``), held to one conformance suite (``tests/network``).
"""
