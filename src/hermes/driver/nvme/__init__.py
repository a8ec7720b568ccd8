"""Host-side driver for the NVMe CP/SLM controller: queue pairs, PRPs, admin, CP and SLM commands.

It reaches the controller only through a ``hermes.transport`` ``Transport`` (BAR0 accesses, DMA
buffers, interrupt waits), so the same code drives the in-process model and, later, a
controller behind vfio-user.
"""
from __future__ import annotations

from .host import DEFAULT_TIMEOUT, Namespace, NvmeHost, NvmeStatusError, build_prps
from .passthru import PassthroughHost, namespace_devices
from .queue import QueuePair

__all__ = ["DEFAULT_TIMEOUT", "Namespace", "NvmeHost", "NvmeStatusError", "PassthroughHost",
           "QueuePair", "build_prps", "namespace_devices"]
