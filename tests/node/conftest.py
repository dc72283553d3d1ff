"""Fixtures for node tests: the network backends of ``tests/network`` (memory and libp2p)."""

from __future__ import annotations

from tests.network.conftest import backend_name, open_group

__all__ = ["backend_name", "open_group"]
