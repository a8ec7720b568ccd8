# Guest figures: 1 MiB write+read and fsync round trip, through /dev/hermes0 and over VFIO.
part bench-devfile bench_devfile
part bench-devfile-identity-domain bench_devfile_identity
part bench-vfio bench_vfio
finish
