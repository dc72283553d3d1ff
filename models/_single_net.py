"""The part of an adapter that serves one torch network from one published weight file.

Upscaling (RRDBNet) and frame interpolation (IFNet) differ in their network and
their requests, not in how the network is built, loaded, hashed and released:
that lifecycle lives here once. A subclass names its module (the key of the
weights hash, e.g. ``"generator"``) and says how to build the tiny network and
read the real one.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

from .base import ModelAdapter, ModelSpec
from .errors import NotLoaded
from .statedict import file_sha256, locate_weight_file
from .weights import hash_modules


class NetworkSetup(Protocol):
    @property
    def weight_file(self) -> str | None: ...  # under weights_dir / spec.weights_subdir; None: tiny

    @property
    def source(self) -> str: ...  # where the file is published, for WeightsMissing


NetT = TypeVar("NetT", bound=torch.nn.Module)
SetupT = TypeVar("SetupT", bound=NetworkSetup)


class SingleNetworkAdapter(ModelAdapter, Generic[NetT, SetupT]):
    MODULE_NAME: str  # key of the network in the weights hash

    def __init__(self, spec: ModelSpec, weights_dir: Path | None, setup: SetupT) -> None:
        super().__init__(spec, weights_dir)
        self.setup = setup
        self._net: NetT | None = None

    @property
    def network(self) -> NetT:
        """The loaded network, for callers that work on arrays instead of requests."""
        if self._net is None:
            raise NotLoaded(f"{self.spec.name} is not loaded; call load() first")
        return self._net

    @abstractmethod
    def _build_tiny(self) -> NetT:
        """The tiny preset's network: real architecture, seeded random weights, on the CPU."""

    @abstractmethod
    def _read_real(self) -> NetT:
        """The network with the published weights of :meth:`_weight_path` (ModelLoadError if unusable)."""

    def _weight_path(self) -> Path:
        assert self.setup.weight_file is not None and self.spec.weights_subdir is not None
        return locate_weight_file(
            self.spec.name, self.weights_dir, self.spec.weights_subdir, self.setup.weight_file, self.setup.source
        )

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        net = self._build_tiny() if self.setup.weight_file is None else self._read_real()
        self._net = net.eval().to(device=device, dtype=dtype)

    def _unload(self) -> None:
        self._net = None

    def _modules(self) -> dict[str, torch.nn.Module]:
        if self._net is not None:
            return {self.MODULE_NAME: self._net}
        return {self.MODULE_NAME: self._build_tiny()} if self.setup.weight_file is None else {}

    def _compute_weights_sha256(self) -> str:
        if self.setup.weight_file is None:
            # Always the fp32 CPU weights, whatever device and dtype they are loaded at.
            return hash_modules({self.MODULE_NAME: self._build_tiny()})
        return file_sha256(self._weight_path())
