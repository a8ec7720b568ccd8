"""The device side of the VFIO boundary: a device model presented as a PCI function and served.

``function`` turns a device model into a VFIO PCI function (regions, config space, MSI-X
eventfds, DMA space); ``vfio_user`` serves one over a vfio-user socket (``hermes serve``).
Import submodules directly.
"""
