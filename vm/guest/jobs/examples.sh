# The C examples through `hermes run --device vfio:` and through /dev/hermes0.
part examples-over-vfio examples_vfio
part examples-over-devfile examples_devfile
finish
