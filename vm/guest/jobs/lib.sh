# Library and driver suites over the `vfio` transport on the guest kernel.
part lib-over-vfio run_lib
finish
