"""The lpnode exception tree.

Every error the project raises on purpose derives from :class:`LpnodeError`;
boundaries (the RPC API, the CLI, stream handlers) map these to status codes,
exit codes or wire errors in one place each.

    LpnodeError
    ├── ProtocolError                 a peer sent something we cannot accept
    │   ├── MalformedMessage          not msgpack, wrong shape, wrong field types
    │   ├── OversizedMessage          longer than the bound for its type
    │   │   ├── FrameTooLarge         a frame header announces more than the receiver accepts
    │   │   └── TransferTooLarge      a transfer announces more bytes than the receiver accepts
    │   ├── UnknownMessageType        type tag we do not know
    │   ├── UnsupportedVersion        protocol version we do not speak
    │   ├── InvalidSignature          signature does not verify, or signer is not who it claims
    │   ├── ProtocolViolation         a job message out of turn, or one that breaks the negotiation's terms
    │   ├── ReceiptRejected           a receipt that does not verify or does not fit its job
    │   │   └── OutputMismatch        outputs whose hashes differ from the signed receipt
    │   └── TransferCorrupt           a transfer's bytes do not match its announced length or sha256
    ├── AdvertRejected                a well-formed advert that must not enter the directory
    ├── InvalidTransition             this node asked its own negotiation for a step its state forbids (a bug)
    ├── ConfigError                   invalid configuration (file, environment or flags)
    ├── IdentityError                 the node key cannot be read or created
    └── NetworkError                  transport-level failure
        ├── PeerUnreachable           dialing a peer failed
        ├── StreamClosed              the remote closed or reset a stream mid-message
        │   └── FrameTruncated        ... inside a frame: ``missing`` bytes never came
        ├── StreamTimeout             a frame did not arrive (or could not be sent) in time
        └── StreamBroken              the stream was reset after a failure or cancellation mid-frame
"""

from __future__ import annotations


class LpnodeError(Exception):
    """Root of every error lpnode raises on purpose."""


class ProtocolError(LpnodeError):
    """A peer sent bytes we cannot accept."""


class MalformedMessage(ProtocolError):
    """Not decodable, or decodable into the wrong shape."""


class OversizedMessage(ProtocolError):
    """Longer than the bound for its message type."""


class UnknownMessageType(ProtocolError):
    """A type tag this version does not know."""


class UnsupportedVersion(ProtocolError):
    """A protocol version this node does not speak."""


class InvalidSignature(ProtocolError):
    """The signature does not verify, or the signer is not the claimed peer."""


class ProtocolViolation(ProtocolError):
    """A peer's job message that its negotiation state does not allow, or that breaks its terms.

    The negotiation has already moved to ``failed`` when this is raised; ``actions``
    are what the I/O layer must still carry out (free a reservation, stop a run,
    tell the peer), so a violation never leaks capacity. ``reason`` is a short
    machine-readable word for counters and blame.
    """

    def __init__(self, reason: str, detail: str = "", actions: tuple[object, ...] = ()) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.actions = actions


class ReceiptRejected(ProtocolError):
    """A receipt that must not be trusted: ``reason`` is ``bad_signature``, ``malformed``,
    ``wrong_signer``, ``job_id_mismatch``, ``oversized``, ``output_mismatch``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class OutputMismatch(ReceiptRejected):
    """Delivered outputs whose hashes are not the ones the worker signed."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("output_mismatch", detail)


class InvalidTransition(LpnodeError):
    """This node asked its own negotiation for a step the current state forbids (a caller bug)."""


class AdvertRejected(LpnodeError):
    """A decodable advert that must not enter the peer directory.

    ``reason`` is a short machine-readable word (``expired``, ``replayed``,
    ``clock_skew``, ``forged_origin``, ...) used as a counter key.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ConfigError(LpnodeError):
    """Invalid configuration; the message names the setting and the source."""


class IdentityError(LpnodeError):
    """The node identity key cannot be loaded or created."""


class NetworkError(LpnodeError):
    """Transport-level failure."""


class PeerUnreachable(NetworkError):
    """Dialing a peer, or opening a stream to it, failed."""


class StreamClosed(NetworkError):
    """The remote closed or reset a stream before a whole message arrived."""


class FrameTooLarge(OversizedMessage):
    """A frame header announces a body longer than the receiver accepts; the body is never read."""

    def __init__(self, announced: int, limit: int) -> None:
        super().__init__(f"frame of {announced} bytes announced, limit {limit}")
        self.announced = announced
        self.limit = limit


class TransferTooLarge(OversizedMessage):
    """A transfer announces more bytes than the receiver accepts; no chunk is read."""

    def __init__(self, announced: int, limit: int) -> None:
        super().__init__(f"transfer of {announced} bytes announced, limit {limit}")
        self.announced = announced
        self.limit = limit


class TransferCorrupt(ProtocolError):
    """The bytes of a transfer do not match the length or sha256 its header announced."""


class FrameTruncated(StreamClosed):
    """The stream ended inside a frame; ``missing`` of its ``expected`` bytes never came."""

    def __init__(self, what: str, expected: int, missing: int) -> None:
        super().__init__(f"stream ended {missing} bytes short of a {expected}-byte {what}")
        self.expected = expected
        self.missing = missing


class StreamTimeout(NetworkError):
    """A frame did not arrive, or could not be sent, within its time limit."""


class StreamBroken(NetworkError):
    """The stream was reset after a failure or cancellation mid-frame (or closed locally): open a new one."""
