"""The node's Ed25519 identity key, kept in its data directory.

Created on first run (mode 0600, written atomically so a crash never leaves a
half-written key), reused afterwards; the libp2p peer id derives from it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from lpnode.protocol.errors import IdentityError
from lpnode.protocol.signing import SEED_BYTES, NodeKey

KEY_FILE = "identity.key"
log = logging.getLogger(__name__)


def load_or_create_key(data_dir: Path) -> NodeKey:
    """The node key in ``data_dir``, created there if absent."""
    path = data_dir / KEY_FILE
    if path.exists():
        return load_key(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = NodeKey.generate()
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(key.seed)
            file.flush()
            os.fsync(file.fileno())
        # link() fails if another process created the key meanwhile: then theirs wins
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_key(path)
    except OSError as exc:
        raise IdentityError(f"cannot create node key {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created node identity %s in %s", key.peer_id, path)
    return key


def load_key(path: Path) -> NodeKey:
    try:
        mode = path.stat().st_mode
        seed = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read node key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("node key %s is readable by other users (mode %o); run: chmod 600 %s", path, mode & 0o777, path)
    if len(seed) != SEED_BYTES:
        raise IdentityError(
            f"node key {path} holds {len(seed)} bytes, expected {SEED_BYTES}; "
            "move it away to create a new identity (peers will see a new node)"
        )
    return NodeKey(seed)
