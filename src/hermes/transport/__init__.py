"""Transports: how the driver reaches a device's BARs, DMA memory and interrupts."""
from .base import DmaBuffer, Transport

__all__ = ["DmaBuffer", "Transport"]
