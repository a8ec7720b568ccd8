# What CI runs (./dev vm test): every suite, one boot.
part smoke python -m tests.vm.smoke "$BDF" /x/host-info.json
part driver-over-devfile run_driver
part examples-over-devfile examples_devfile
part lib-over-vfio run_lib
part examples-over-vfio examples_vfio
finish
