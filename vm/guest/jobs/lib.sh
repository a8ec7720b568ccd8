# Library and driver suites over the `vfio` transport on the guest kernel (device bound to vfio-pci).
run_lib() {
    bind_vfio || return 1
    HERMES_TEST_BACKENDS=vfio-guest HERMES_VM_BDF=$BDF HERMES_VM_DEVICE_INFO=/x/host-info.json \
        gpytest -p tests.vm.backends -rs tests/test_lib.py tests/test_driver.py \
        tests/test_driver_robustness.py ${LIB_TESTS_ARGS:-}
}
part lib-over-vfio run_lib
finish
