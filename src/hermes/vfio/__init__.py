"""The VFIO and vfio-user wire format both sides share: kernel UAPI layouts, protocol, PCI, MMIO.

Both the client transports (``hermes.transport.vfio``, ``.vfio_user``) and the device-side server
(``hermes.server``) import these modules; they import nothing above ``regs`` and ``errors``.
"""
