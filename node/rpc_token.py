"""The bearer token that guards the local RPC API, kept in the data directory.

Whoever can read ``<data-dir>/rpc.token`` can drive the node (and later spend
its credit), so it is created once with mode 0600, like the identity key, and
only the node's own user can use the API. The CLI reads it from the same data
directory, which is what makes several nodes on one machine easy to drive.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from lpnode.protocol.errors import LpnodeError

TOKEN_FILE = "rpc.token"
_TOKEN_BYTES = 32  # 256 bits of secrets.token_urlsafe: not guessable over a loopback socket
_MAX_TOKEN_CHARS = 256


class RpcTokenError(LpnodeError):
    """The RPC token cannot be read or created."""


def load_or_create_token(data_dir: Path) -> str:
    """The RPC token in ``data_dir``, created there (mode 0600) if absent."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        return read_token(data_dir)
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        # link() refuses to replace: if another process won the race, its token stands
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_token(data_dir)
    except OSError as exc:
        raise RpcTokenError(f"cannot create RPC token {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return token


def read_token(data_dir: Path) -> str:
    """The token of the node with ``data_dir``; raise :class:`RpcTokenError` if missing or unusable."""
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""  # undecodable bytes: malformed, reported below
    except FileNotFoundError:
        raise RpcTokenError(
            f"no RPC token in {data_dir}: start a node with `lpnode run --data-dir {data_dir}` to create one"
        ) from None
    except OSError as exc:
        raise RpcTokenError(f"cannot read RPC token {path}: {exc.strerror}") from exc
    if not token or len(token) > _MAX_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise RpcTokenError(f"RPC token {path} is empty or malformed; delete it and restart the node")
    return token
