"""lpnode wire protocol: messages, codec, signatures and errors. Pure: no I/O."""

from __future__ import annotations

from .advert import CapabilityAdvert, GpuInfo, ModelOffer, sign_advert, verify_advert
from .codec import PROTOCOL_VERSION, canonical_bytes, decode, encode
from .envelope import SignedEnvelope, open_envelope, seal
from .errors import (
    AdvertRejected,
    ConfigError,
    IdentityError,
    InvalidSignature,
    LpnodeError,
    MalformedMessage,
    NetworkError,
    OversizedMessage,
    PeerUnreachable,
    ProtocolError,
    StreamClosed,
    UnknownMessageType,
    UnsupportedVersion,
)
from .names import ADVERT_TOPIC, JOB_PROTOCOL, SOFTWARE_VERSION
from .peer_id import peer_id_from_public_key, public_key_from_peer_id
from .signing import NodeKey, verify

__all__ = [
    "ADVERT_TOPIC",
    "JOB_PROTOCOL",
    "PROTOCOL_VERSION",
    "SOFTWARE_VERSION",
    "AdvertRejected",
    "CapabilityAdvert",
    "ConfigError",
    "GpuInfo",
    "IdentityError",
    "InvalidSignature",
    "LpnodeError",
    "MalformedMessage",
    "ModelOffer",
    "NetworkError",
    "NodeKey",
    "OversizedMessage",
    "PeerUnreachable",
    "ProtocolError",
    "SignedEnvelope",
    "StreamClosed",
    "UnknownMessageType",
    "UnsupportedVersion",
    "canonical_bytes",
    "decode",
    "encode",
    "open_envelope",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "seal",
    "sign_advert",
    "verify",
    "verify_advert",
]
