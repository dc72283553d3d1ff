"""``<data-dir>/rpc.json``: where a running node's RPC API listens, for clients to find.

Written by ``serve_rpc`` once the server is bound (so port 0 works) and
removed when it stops. A node killed with SIGKILL leaves the file behind;
the recorded pid tells a live node from a stale file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lpnode.protocol.errors import LpnodeError

INFO_FILE = "rpc.json"


class NodeNotRunning(LpnodeError):
    """No live node serves the RPC API for this data directory."""

    def __init__(self, data_dir: Path, why: str = "") -> None:
        hint = f"no node running with data dir {data_dir}: start one with `lpnode run --data-dir {data_dir}`"
        super().__init__(f"{hint} ({why})" if why else hint)
        self.data_dir = data_dir


class NodeAlreadyRunning(LpnodeError):
    """Another live node already uses this data directory (and so this identity)."""


@dataclass(frozen=True)
class RpcInfo:
    url: str  # e.g. "http://127.0.0.1:9470"
    pid: int  # the node's process id


def write_info(data_dir: Path, info: RpcInfo) -> None:
    """Replace ``rpc.json`` atomically: a client never reads half a file."""
    path = data_dir / INFO_FILE
    tmp = path.with_name(f".{INFO_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": info.url, "pid": info.pid}) + "\n")
    tmp.replace(path)


def remove_info(data_dir: Path, pid: int) -> None:
    """Remove ``rpc.json`` if it still describes process ``pid``."""
    path = data_dir / INFO_FILE
    try:
        current = _parse(path)
    except (OSError, ValueError):
        return
    if current.pid == pid:
        path.unlink(missing_ok=True)


def read_info(data_dir: Path) -> RpcInfo:
    """The running node's RPC address; raise :class:`NodeNotRunning` if there is none."""
    path = data_dir / INFO_FILE
    try:
        info = _parse(path)
    except FileNotFoundError:
        raise NodeNotRunning(data_dir) from None
    except (OSError, ValueError) as exc:
        raise NodeNotRunning(data_dir, f"{path} is unreadable: {exc}") from None
    if not pid_alive(info.pid):
        raise NodeNotRunning(data_dir, f"{path} is left from process {info.pid}, which has exited")
    return info


def check_not_running(data_dir: Path) -> None:
    """Raise :class:`NodeAlreadyRunning` if a live node other than us uses ``data_dir``."""
    try:
        info = _parse(data_dir / INFO_FILE)
    except (OSError, ValueError):
        return
    if info.pid != os.getpid() and pid_alive(info.pid):
        raise NodeAlreadyRunning(
            f"a node (pid {info.pid}, RPC {info.url}) already runs with data dir {data_dir}; "
            "stop it first, or give this one its own --data-dir"
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True


def _parse(path: Path) -> RpcInfo:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) or not isinstance(raw.get("pid"), int):
        raise ValueError('expected {"url": str, "pid": int}')
    return RpcInfo(url=raw["url"], pid=raw["pid"])
