# The driver-interface cases over /dev/hermes0 through the project's kernel driver.
run_driver() {
    load_module || return 1
    HERMES_TEST_BACKENDS=devfile HERMES_VM_DEVFILE=/dev/hermes0 HERMES_VM_DEVICE_INFO=/x/host-info.json \
        gpytest -p tests.vm.backends -rs tests/test_driver.py tests/test_driver_robustness.py
    rc=$?
    unload_module || rc=1
    return $rc
}
part driver-over-devfile run_driver
finish
