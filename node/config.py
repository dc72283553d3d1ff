"""NodeConfig: one validated configuration from defaults, a TOML file, the environment and flags.

Precedence, lowest first: built-in defaults, the TOML file (``--config``),
``LPNODE_*`` environment variables, command-line flags. Every value is
checked in :meth:`NodeConfig.validate`; a bad one raises :class:`ConfigError`
naming the setting and where it came from.

TOML keys are the field names below (``listen``, ``bootstrap``, ``rpc``, ...);
environment variables are ``LPNODE_`` + the upper-case name
(``LPNODE_RPC=127.0.0.1:9480``); lists in the environment are comma-separated.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from lpnode.protocol.errors import ConfigError

DEFAULT_P2P_PORT = 9471
DEFAULT_RPC_PORT = 9470
LOG_LEVELS = ("debug", "info", "warning", "error")
SERVE_NONE = "none"  # serve = ["none"]: a requester-only node that offers no models


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("lpnode", appauthor=False))


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    listen: tuple[str, ...] = (f"/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}",)  # libp2p multiaddrs to listen on
    bootstrap: tuple[str, ...] = ()  # multiaddrs (ending in /p2p/<id>) dialed at start and kept connected
    mdns: bool = True  # find peers on the local network
    rpc: str = f"127.0.0.1:{DEFAULT_RPC_PORT}"  # HOST:PORT of the local RPC API; port 0 picks a free one
    rpc_allow_remote: bool = False  # required to bind the RPC API to a non-loopback address
    log_level: str = "info"
    serve: tuple[str, ...] = ()  # model presets to serve; empty = this machine's defaults; ("none",) = no models
    warm: tuple[str, ...] = ()  # served presets loaded at start and never evicted; empty = the defaults
    weights_dir: Path | None = None  # real presets' weights (<weights_dir>/<preset folder>); None = <data_dir>/weights
    device: str = "auto"  # "auto" (first CUDA device, else the CPU), "cpu", "cuda:1", ...
    vram_budget_bytes: int = 0  # memory the model pool may fill; 0 = 90% of what is free at start
    compile: str = "auto"  # "auto": compile warm models' hot path on CUDA; "off": always eager
    batch_window_ms: float = 10.0  # how long a batchable job waits for companions; 0 disables batching waits
    price_per_mpx_step: int = 100  # micro-credits per megapixel-step, for every served model
    queue_capacity: int = 4  # jobs held at once (running + waiting)
    advert_interval_s: float = 5.0  # publish our advert at least this often
    advert_ttl_s: float = 30.0  # adverts expire this long after issue
    advert_min_gap_s: float = 0.5  # never publish more often than this (changes are coalesced)
    advert_settle_s: float = 0.05  # after a change, wait this long for the rest of its burst before advertising
    max_clock_skew_s: float = 30.0  # reject adverts issued further than this in the future
    peer_disconnect_grace_s: float = 5.0  # drop a directly connected peer this long after it disconnects
    max_peers: int = 4096  # peer directory capacity
    max_connections: int = 16  # peers we dial from the directory, at most; each costs CPU (pings, flooding)
    max_input_bytes: int = 64 * 1024 * 1024  # one uploaded input (image, video) of an RPC job; larger: HTTP 413
    outputs_max_bytes: int = 2 * 1024 * 1024 * 1024  # job outputs kept on disk for download; the oldest go first
    max_rpc_jobs: int = 64  # RPC requests queued or running at once; more are refused (HTTP 429)
    spare_stream_ttl_s: float = 5.0  # keep a job stream open ahead to each worker in use this long; 0 = off
    explore_share: float = 0.05  # jobs sent to a peer the ranking would not pick first, so newcomers get a record

    def validate(self, sources: Mapping[str, str] | None = None) -> NodeConfig:
        """Return self if every value is sane; raise ConfigError otherwise.

        ``sources`` maps a setting to where its value came from (a file, ``$LPNODE_X``, the command line):
        a refusal names it, so the user knows which of the merged sources to fix.
        """
        try:
            return self._validate()
        except ConfigError as exc:
            setting = str(exc).split(":", 1)[0].split(" ", 1)[0]
            where = (sources or {}).get(setting)
            if where is None or "(from " in str(exc):
                raise
            raise ConfigError(f"{exc} (from {where})") from None

    def _validate(self) -> NodeConfig:
        for key, addrs in (("listen", self.listen), ("bootstrap", self.bootstrap)):
            for addr in addrs:
                _check_multiaddr(key, addr)
        for addr in self.bootstrap:
            if "/p2p/" not in addr:
                raise ConfigError(f"bootstrap: address {addr!r} must end in /p2p/<peer id>")
        if not self.listen:
            raise ConfigError("listen: at least one address is needed")
        host = self.rpc_host
        if not self.rpc_allow_remote and not _is_loopback(host):
            raise ConfigError(
                f"rpc: {host} is not a loopback address; the RPC API controls this node and spends its "
                "credit, so binding it elsewhere needs --rpc-allow-remote"
            )
        if SERVE_NONE in self.serve and len(self.serve) > 1:
            raise ConfigError(f"serve: {SERVE_NONE!r} (requester only) cannot be combined with models")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        _check_range("price_per_mpx_step", self.price_per_mpx_step, 0, 10**12)
        if self.serve and (extra := set(self.warm) - set(self.serve)):
            raise ConfigError(f"warm: {sorted(extra)} must also be in serve ({list(self.serve)})")
        if self.compile not in ("auto", "off"):
            raise ConfigError(f"compile: {self.compile!r} is not 'auto' or 'off'")
        if self.device not in ("auto", "cpu") and not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device: {self.device!r} is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        _check_range("vram_budget_bytes", self.vram_budget_bytes, 0, 2**50)
        _check_range("batch_window_ms", self.batch_window_ms, 0, 1000)
        _check_range("queue_capacity", self.queue_capacity, 1, 10_000)
        _check_range("advert_interval_s", self.advert_interval_s, 0.1, 3600)
        _check_range("advert_ttl_s", self.advert_ttl_s, 1, 600)
        _check_range("advert_min_gap_s", self.advert_min_gap_s, 0, 60)
        _check_range("advert_settle_s", self.advert_settle_s, 0, 10)
        _check_range("max_clock_skew_s", self.max_clock_skew_s, 0, 3600)
        _check_range("peer_disconnect_grace_s", self.peer_disconnect_grace_s, 0, 3600)
        _check_range("max_peers", self.max_peers, 1, 1_000_000)
        _check_range("max_connections", self.max_connections, 0, 10_000)
        _check_range("max_input_bytes", self.max_input_bytes, 1024, 2**40)
        _check_range("outputs_max_bytes", self.outputs_max_bytes, 1024 * 1024, 2**50)
        _check_range("max_rpc_jobs", self.max_rpc_jobs, 1, 100_000)
        _check_range("spare_stream_ttl_s", self.spare_stream_ttl_s, 0, 60)
        _check_range("explore_share", self.explore_share, 0, 1)
        if self.advert_ttl_s <= self.advert_interval_s:
            raise ConfigError(
                f"advert_ttl_s ({self.advert_ttl_s}) must exceed advert_interval_s ({self.advert_interval_s}), "
                "or peers would expire between adverts"
            )
        return self

    @property
    def requester_only(self) -> bool:
        return self.serve == (SERVE_NONE,)

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir if self.weights_dir is not None else self.data_dir / "weights"

    @property
    def rpc_host(self) -> str:
        return parse_host_port(self.rpc, "rpc")[0]

    @property
    def rpc_port(self) -> int:
        return parse_host_port(self.rpc, "rpc")[1]


_DEVICE = re.compile(r"(cuda|mps)(:[0-9]{1,4})?")


def device_problem(device: str) -> str | None:
    """Why ``device`` (a valid setting) cannot be used on this machine, or None if it can.

    "auto" and "cpu" always can (and import nothing); a named accelerator imports torch to ask it:
    a torch built without CUDA failed deep in the model pool ("Torch not compiled with CUDA
    enabled", a traceback) after the models were chosen, not as a setting refused at start (QA s11).
    """
    if device in ("auto", "cpu"):
        return None
    import torch  # only here: client commands never import torch (they validate the same config)

    kind, _, index_text = device.partition(":")
    index = int(index_text) if index_text else 0
    if kind == "cuda":
        if torch.version.cuda is None:
            return f"torch {torch.__version__} has no CUDA"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"no CUDA device is visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
        if index >= count:
            return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        return None
    if kind == "mps":
        if not torch.backends.mps.is_available():
            return f"torch {torch.__version__} has no MPS (Apple GPU) device here"
        if index > 0:
            return "there is one MPS device: mps or mps:0"
        return None
    return f"unknown device kind {kind!r}"


def check_device(config: NodeConfig, sources: Mapping[str, str] | None = None) -> None:
    """ConfigError naming ``device`` (and where it came from) if this machine cannot use it."""
    problem = device_problem(config.device)
    if problem is not None:
        where = (sources or {}).get("device")
        suffix = f" (from {where})" if where else ""
        raise ConfigError(f"device: {config.device!r} is not available ({problem}){suffix}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is outside {low}..{high}")


def _check_multiaddr(key: str, addr: str) -> None:
    """Refuse at start what the network layer would only refuse later: a bootstrap address with a mistyped
    peer id was retried, and logged as unreachable, every few seconds for as long as the node ran."""
    from multiaddr import Multiaddr  # light (~10 ms); py-libp2p's own parser, so what passes here dials there

    if not addr.startswith("/"):
        raise ConfigError(f"{key}: {addr!r} is not a multiaddr (expected e.g. /ip4/127.0.0.1/tcp/9471)")
    try:
        Multiaddr(addr)
    except Exception as exc:  # multiaddr raises several unrelated types (StringParseError, ValueError, ...)
        reason = str(exc).split(" (string: ", 1)[0]  # its message repeats the address, twice
        if reason.startswith("Invalid MultiAddr '"):
            reason = reason.split("': ", 1)[-1]
        raise ConfigError(f"{key}: {addr!r} is not a valid multiaddr ({reason})") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_host_port(text: str, name: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{name}: {text!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_RPC_PORT})")
    return host, int(port_text)


# ---------------------------------------------------------------- merging sources

_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
_HINTS = typing.get_type_hints(NodeConfig)


def load_config(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    for_run: bool = False,
) -> NodeConfig:
    """Merge defaults < file < environment < flags and validate.

    ``flags`` maps field names to values already parsed by the CLI; ``None``
    values mean "not given" and are skipped. ``for_run``: the config of a node about to start,
    so settings that need this machine's hardware are checked too (:func:`check_device`; it
    imports torch, which client commands never do).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        from_file = _from_toml(config_file)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, str(config_file)))
    from_env = _from_env(env or {})
    values.update(from_env)
    sources.update({name: f"$LPNODE_{name.upper()}" for name in from_env})
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, "command line")
        sources[name] = "command line"
    config = NodeConfig(**values).validate(sources)
    if for_run and not config.requester_only:  # a requester-only node runs no models: any device will do
        check_device(config, sources)
    return config


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    out = {}
    for name, value in raw.items():
        if name not in _FIELDS:
            raise ConfigError(f"{path}: unknown setting {name!r} (known: {', '.join(sorted(_FIELDS))})")
        out[name] = _coerce(name, value, str(path))
    if "data_dir" in out and not out["data_dir"].is_absolute():
        out["data_dir"] = (path.parent / out["data_dir"]).resolve()
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in _FIELDS:
        key = f"LPNODE_{name.upper()}"
        if key in env:
            out[name] = _coerce(name, env[key], f"${key}")
    return out


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a TOML value, an environment string or a flag into the field's type."""
    hint = _HINTS[name]
    if hint == Path | None:
        hint = Path
    try:
        if hint is Path:
            if not isinstance(value, str | os.PathLike) or not str(value).strip():
                raise ValueError(f"{value!r} is not a path")  # Path(5) is a TypeError, Path("") the current dir
            return Path(value).expanduser()
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{value!r} is not a boolean")
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(f"{value!r} is not a number")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a string")
            return value
        if typing.get_origin(hint) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"{value!r} is not a list of strings")
            return tuple(i.strip() for i in items if i.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} (from {source}): {exc}") from None
    raise AssertionError(f"no coercion for {name}: {hint!r}")
