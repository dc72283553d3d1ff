"""QA pass 2 (O3): py-libp2p's log lines come out in the node's format (time, level, logger), at WARNING and up.

``import libp2p`` leaves its logger with no handler and ``propagate`` off (LIBP2P_DEBUG unset),
so its warnings went to Python's last-resort handler as bare lines. ``setup_logging`` routes
them through the node's handler.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from lpnode.node.run import setup_logging

_LOGGERS = (
    "",
    "libp2p",
    "libp2p.transport.tcp.tcp",
    "libp2p.network.health.monitor",
    "libp2p.network.swarm",
    "libp2p.host.basic_host",
)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """setup_logging reconfigures the root and libp2p loggers: give the next test them back as they were."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in _LOGGERS]
    handlers = [(logger, list(logger.handlers), logger.propagate) for logger, _ in saved]
    yield
    for logger, level in saved:
        logger.setLevel(level)
    for logger, old, propagate in handlers:
        logger.handlers[:] = old
        logger.propagate = propagate


@pytest.mark.usefixtures("restored_logging")
def test_libp2p_warnings_carry_the_nodes_time_level_and_logger(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    import libp2p.utils.logging

    libp2p.utils.logging.setup_logging()  # the state `import libp2p` leaves, whatever ran before this test
    setup_logging("info")
    libp2p_log = logging.getLogger("libp2p")
    assert libp2p_log.propagate and libp2p_log.level == logging.WARNING
    transport = logging.getLogger("libp2p.transport.tcp")
    transport.warning("Failed to open TCP stream: all attempts to connect to 127.0.0.1:34002 failed")
    transport.info("dial retry 3")  # below WARNING: not the operator's business
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING libp2p\.transport\.tcp: Failed to open TCP stream: .*"
    assert re.fullmatch(pattern, lines[0]), lines[0]


@pytest.mark.usefixtures("restored_logging")
def test_ordinary_churn_is_not_an_error_line_but_debug_shows_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """py-libp2p logs a down peer's every dial at ERROR and a closed peer's failed ping at WARNING; the node says
    what matters itself ("bootstrap ... unreachable"), so an operator saw ERROR lines for normal churn (QA3 Q12)."""
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    import libp2p.utils.logging

    libp2p.utils.logging.setup_logging()
    setup_logging("info")
    logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: all attempts failed")
    logging.getLogger("libp2p.network.health.monitor").warning("Health check failed for a peer")
    assert capsys.readouterr().err == ""
    setup_logging("debug")
    logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: all attempts failed")
    assert "libp2p.transport.tcp.tcp: Failed to open TCP stream" in capsys.readouterr().err


@pytest.mark.usefixtures("restored_logging")
def test_failures_libp2p_logs_and_raises_are_said_once_by_the_node_not_as_libp2p_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: a peer shutting down left "ERROR libp2p.network.swarm: failed to upgrade security ..." and a stopped
    one "ERROR libp2p.host.basic_host: Failed to open stream to peer ...", failures py-libp2p also raises."""
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    import libp2p.utils.logging

    libp2p.utils.logging.setup_logging()
    setup_logging("info")
    swarm, host = logging.getLogger("libp2p.network.swarm"), logging.getLogger("libp2p.host.basic_host")
    swarm.error("failed to upgrade security for peer %s: %s", "12D3KooWx", "failed to negotiate the secure protocol")
    host.error("Failed to open stream to peer 12D3KooWx:\n  Error: ")
    assert capsys.readouterr().err == ""
    swarm.error("something else went wrong")  # any other error of theirs still shows
    assert "ERROR   libp2p.network.swarm: something else went wrong" in capsys.readouterr().err
    setup_logging("debug")  # and at debug, everything
    swarm.error("failed to upgrade security for peer %s: %s", "12D3KooWx", "reset")
    assert "failed to upgrade security for peer 12D3KooWx: reset" in capsys.readouterr().err
