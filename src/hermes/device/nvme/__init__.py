"""The NVMe Computational Programs + Subsystem Local Memory controller model (in process)."""
from __future__ import annotations

from .compute import Limits, MemoryNamespace
from .controller import COMPUTE_NSID, NUM_VECTORS, PCI_IDENTITY, NvmeController

__all__ = ["COMPUTE_NSID", "Limits", "MemoryNamespace", "NUM_VECTORS", "NvmeController",
           "PCI_IDENTITY"]
