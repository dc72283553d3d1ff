"""Response bodies of the local RPC API, and how node state maps onto them.

Every number carries its unit in its name (``_bytes``, ``_ms``, ``_s``,
``price_per_mpx_step`` in micro-credits per megapixel-step), as on the wire.
Times are relative to the node's wall clock at the moment of the answer
(``advert_age_ms``, ``expires_in_ms``), so a client needs no synchronised clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node
from lpnode.node.directory import PeerRecord
from lpnode.protocol.advert import GpuInfo, ModelOffer
from lpnode.protocol.codec import PROTOCOL_VERSION
from lpnode.protocol.names import SOFTWARE_VERSION
from pydantic import BaseModel, Field, model_validator

# The longest long-poll of any route (?wait_s=): keeps a forgotten client from holding a task forever
MAX_WAIT_S = 60.0


class ErrorDetail(BaseModel):
    msg: str


class ValidationIssue(BaseModel):
    """One problem of a refused request, as FastAPI and Livepeer's AI API list them in a 422."""

    loc: list[str | int] = Field(description='where: e.g. `["body", "width"]`, `["query", "wait_s"]`')
    msg: str
    type: str = Field(description="pydantic's error type, or the error kind for a refusal by the network")


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. `unauthorized`, `not_found`, `invalid_request`")
    message: str = Field(description="what went wrong, for humans")
    detail: ErrorDetail | list[ValidationIssue] | None = Field(
        default=None,
        description="the same in the shapes Livepeer's AI API gives errors, so its clients and SDKs read it: "
        '`{"msg": ...}` (its HTTPError) for every status but 422, and for a 422 the list of problems '
        '(its HTTPValidationError, `[{"loc": [...], "msg": ..., "type": ...}]`); filled from `message`',
    )

    @model_validator(mode="after")
    def _livepeer_shape(self) -> ErrorBody:
        if self.detail is None:
            self.detail = ErrorDetail(msg=self.message)
        return self


class Health(BaseModel):
    status: str = "ok"
    software_version: str


class Device(BaseModel):
    name: str
    kind: str = Field(description="`cuda`, `mps` or `cpu`")
    vram_total_bytes: int
    vram_free_bytes: int

    @classmethod
    def of(cls, gpu: GpuInfo) -> Device:
        return cls(
            name=gpu.name, kind=gpu.kind, vram_total_bytes=gpu.vram_total_bytes, vram_free_bytes=gpu.vram_free_bytes
        )


class Limits(BaseModel):
    """The largest job the model takes (the worker still checks every job itself)."""

    max_pixels: int = Field(description="width × height of one output image or frame")
    max_side: int = Field(description="pixels, either side of the output")
    max_steps: int
    max_frames: int
    max_batch: int


class Model(BaseModel):
    pipeline: str
    model_id: str
    weights_sha256: str
    warm: bool = Field(description="loaded on the device now")
    speed_mpx_steps_per_s: float = Field(description="measured megapixel-steps per second; 0 = not measured yet")
    price_per_mpx_step: int = Field(description="micro-credits per megapixel-step")
    limits: Limits | None = Field(None, description="what the model takes; null: its advert does not say")

    @classmethod
    def of(cls, offer: ModelOffer) -> Model:
        limits = offer.limits
        return cls(
            pipeline=offer.pipeline,
            model_id=offer.model_id,
            weights_sha256=offer.weights_sha256,
            warm=offer.warm,
            speed_mpx_steps_per_s=offer.speed_mpx_steps_per_s,
            price_per_mpx_step=offer.price_per_mpx_step,
            limits=None if limits is None else Limits(**dataclasses.asdict(limits)),
        )


class Peer(BaseModel):
    peer_id: str
    listen_addrs: list[str]
    software_version: str
    protocol_version: int
    gpus: list[Device]
    models: list[Model]
    queue_depth: int = Field(description="jobs waiting or running at advert time")
    queue_capacity: int = Field(description="jobs the peer holds at once")
    seq: int = Field(description="advert sequence number")
    advert_age_ms: int = Field(description="how long ago the peer issued its advert (its clock vs ours)")
    expires_in_ms: int = Field(description="until the advert expires, unless a newer one arrives")
    received_from: str = Field(description="the neighbour that relayed the advert")
    connected: bool = Field(description="a direct connection to the peer is open")

    @classmethod
    def of(cls, record: PeerRecord, now_ms: int) -> Peer:
        advert = record.advert
        return cls(
            peer_id=advert.peer_id,
            listen_addrs=list(advert.listen_addrs),
            software_version=advert.software_version,
            protocol_version=advert.protocol_version,
            gpus=[Device.of(g) for g in advert.gpus],
            models=[Model.of(m) for m in advert.models],
            queue_depth=advert.queue_depth,
            queue_capacity=advert.queue_capacity,
            seq=advert.seq,
            advert_age_ms=max(0, now_ms - advert.issued_at_ms),
            expires_in_ms=max(0, advert.expires_at_ms - now_ms),
            received_from=record.received_from,
            connected=record.connected,
        )


class PeerList(BaseModel):
    version: str = Field(
        description="changes whenever the list does (peers, sequence numbers, connectivity); "
        "pass it back as `changed_since` to wait for the next change"
    )
    peers: list[Peer]


class GossipCounters(BaseModel):
    adverts_published: int
    adverts_accepted: int
    adverts_dropped: int = Field(description="total of adverts_dropped_by_reason")
    adverts_dropped_by_reason: dict[str, int] = Field(
        description="`malformed`, `oversized`, `bad_signature`, `forged_origin`, `replayed`, `expired`, ..."
    )
    peers_expired: int
    network: dict[str, int] = Field(description="transport counters, where the backend keeps them")


class ConfigSummary(BaseModel):
    data_dir: str
    listen: list[str]
    bootstrap: list[str]
    mdns: bool
    rpc: str
    rpc_allow_remote: bool
    log_level: str
    serve: list[str]
    price_per_mpx_step: int
    queue_capacity: int
    advert_interval_s: float
    advert_ttl_s: float

    @classmethod
    def of(cls, config: NodeConfig) -> ConfigSummary:
        return cls(
            data_dir=str(config.data_dir),
            listen=list(config.listen),
            bootstrap=list(config.bootstrap),
            mdns=config.mdns,
            rpc=config.rpc,
            rpc_allow_remote=config.rpc_allow_remote,
            log_level=config.log_level,
            serve=list(config.serve),
            price_per_mpx_step=config.price_per_mpx_step,
            queue_capacity=config.queue_capacity,
            advert_interval_s=config.advert_interval_s,
            advert_ttl_s=config.advert_ttl_s,
        )


class NodeInfo(BaseModel):
    peer_id: str
    listen_addrs: list[str]
    software_version: str
    protocol_version: int
    uptime_s: float
    devices: list[Device] = Field(description="as in our latest advert")
    models: list[Model] = Field(description="as in our latest advert")
    queue_depth: int
    queue_capacity: int
    advert_seq: int | None = Field(description="sequence number of our latest advert; null before the first")
    connected_peers: int = Field(description="peers with an open direct connection")
    known_peers: int = Field(description="peers in the directory (verified, unexpired adverts)")
    gossip: GossipCounters
    config: ConfigSummary

    @classmethod
    def of(cls, node: Node, network_counters: dict[str, int]) -> NodeInfo:
        advert = node.publisher.last
        stats = node.gossip_stats
        return cls(
            peer_id=node.peer_id,
            listen_addrs=node.network.listen_addrs(),
            software_version=SOFTWARE_VERSION,
            protocol_version=PROTOCOL_VERSION,
            uptime_s=round(max(0.0, node.wall_clock() - node.started_at), 3),
            devices=[Device.of(g) for g in advert.gpus] if advert else [],
            models=[Model.of(m) for m in advert.models] if advert else [],
            queue_depth=advert.queue_depth if advert else 0,
            queue_capacity=advert.queue_capacity if advert else node.config.queue_capacity,
            advert_seq=advert.seq if advert else None,
            connected_peers=len(node.network.connected_peers()),
            known_peers=len(node.directory),
            gossip=GossipCounters(
                adverts_published=stats.published,
                adverts_accepted=stats.accepted,
                adverts_dropped=sum(stats.dropped.values()),
                adverts_dropped_by_reason=dict(stats.dropped),
                peers_expired=stats.expired_peers,
                network=network_counters,
            ),
            config=ConfigSummary.of(node.config),
        )


def peer_list(records: Iterable[PeerRecord], now_ms: int) -> PeerList:
    ordered = sorted(records, key=lambda r: r.peer_id)
    return PeerList(version=directory_version(ordered), peers=[Peer.of(r, now_ms) for r in ordered])


def directory_version(records: Iterable[PeerRecord]) -> str:
    """A short digest of what a peer list shows, except the ages that change by themselves."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.peer_id):
        digest.update(f"{record.peer_id}:{record.advert.seq}:{int(record.connected)};".encode())
    return digest.hexdigest()[:16]


class LocalModel(BaseModel):
    """One model this node serves, as its model pool sees it."""

    name: str = Field(description="preset name, as in `serve`")
    model_id: str
    pipelines: list[str]
    weights_sha256: str = Field(description="hex sha256 of the weights; empty until hashed or when missing")
    warm: bool = Field(description="loaded on the device now")
    pinned: bool = Field(description="loaded at start and never evicted")
    loading: bool
    compiled: list[str] = Field(description="components running compiled; empty = eager")
    vram_estimate_bytes: int
    vram_measured_bytes: int | None = Field(description="charged to the budget after a load; null = never loaded")
    speed_mpx_steps_per_s: float = Field(
        description="marginal speed fitted on recent runs (the advert's); 0 = not measured yet"
    )
    overhead_s: float = Field(0.0, description="fixed seconds per run beside the work; 0 = not told apart yet")
    queued: int
    running: int
    problem: str = Field(description="last load error; empty if none")


class ModelList(BaseModel):
    models: list[LocalModel]
    requester_only: bool = Field(description="this node serves no models")
