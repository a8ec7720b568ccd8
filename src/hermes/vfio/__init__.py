"""vfio-user and VFIO support: shared UAPI layouts, the wire protocol, the server side of a device.

Import submodules directly: ``protocol`` and ``uapi`` are dependency-free (the client transports
use them); ``function`` and ``server`` import the device model.
"""
