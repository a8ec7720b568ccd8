# The kernel driver's own tests in the guest: its C test program, unload with files open, unbind, figures.
KMOD=/x/kmod
TEST=$KMOD/tests/hermes_test

build_test_prog() {
    make -s -C $KMOD test-prog || return 1
    grep -qw smap /proc/cpuinfo && echo "cpu: SMAP on" || echo "cpu: SMAP off"
}

run_c_tests() {
    load_module || return 1
    $TEST -e /x/bpf/increment.bpf.o > $OUT/kdriver-tests.txt
    rc=$?
    cat $OUT/kdriver-tests.txt
    unload_module || rc=1
    return $rc
}

# The same tests with every wait polled (module parameter msix=N): the fallback when a device
# gives no vectors, or never raises the interrupt a waiter expects.
run_c_tests_polled() {
    unbind
    insmod $KMOD/hermes.ko msix=0 || return 1
    for i in $(seq 50); do [ -e /dev/hermes0 ] && break; sleep 0.1; done
    [ "$(cat /sys/class/hermes/hermes0/vectors)" = 0 ] || { echo "vectors in use with msix=0"; return 1; }
    $TEST -e /x/bpf/increment.bpf.o > $OUT/kdriver-tests-polled.txt
    rc=$?
    cat $OUT/kdriver-tests-polled.txt
    unload_module || rc=1
    return $rc
}

# Slots another driver left allocated (here: the Python driver over vfio-pci, exiting without
# releasing three) are freed when the module binds, so every slot is usable again.
reclaims_leftover_slots() {
    bind_vfio || return 1
    python3 - "$BDF" <<'PY' || return 1
import os, sys
import hermes.driver
from hermes import regs
from hermes.transport.vfio import VfioTransport
drv = hermes.driver.attach(VfioTransport(sys.argv[1]))
print("left allocated:", [drv.request_slot(regs.SLOT_PROGRAM) for _ in range(3)])
os._exit(0)   # no release, no close: the slots stay allocated on the device
PY
    seen=$(dmesg | wc -l)
    load_module || return 1
    dmesg | tail -n +$((seen + 1)) | grep "freed 3 slots" || { echo "no slots freed at probe"; return 1; }
    $TEST -k TooManyPrograms
    rc=$?
    unload_module || rc=1
    return $rc
}

# rmmod refuses while a file is open, works once it is closed; no oops or warning on the way.
unload_with_files() {
    load_module || return 1
    exec 3<>/dev/hermes0
    if rmmod hermes 2>/dev/null; then echo "rmmod succeeded with /dev/hermes0 open"; return 1; fi
    exec 3>&-
    rmmod hermes || return 1
    load_module || return 1
    unload_module || return 1
    echo "rmmod: refused with a file open, clean once closed"
}

# Unbinding the device while a file is open: the file then fails with ENODEV, closing it works.
unbind_with_file() {
    load_module || return 1
    python3 - "$BDF" <<'PY' || return 1
import ctypes, errno, fcntl, os, struct, sys
from hermes.driver import HERMES_DOWNLOAD_PROG_IOCTL
prog = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)
fd = os.open("/dev/hermes0", os.O_RDWR)
fcntl.ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL, struct.pack("=I4xQI4x", 16, ctypes.addressof(prog), 0))
assert os.pwrite(fd, b"x" * 64, 0) == 64
with open("/sys/bus/pci/drivers/hermes/unbind", "w") as f:
    f.write(sys.argv[1])
try:
    os.pwrite(fd, b"y", 0)
    sys.exit("write after unbind succeeded")
except OSError as exc:
    assert exc.errno == errno.ENODEV, exc
os.close(fd)
print("unbind: open file gets ENODEV, close works")
PY
    echo "$BDF" > /sys/bus/pci/drivers/hermes/bind || return 1
    [ -e /dev/hermes0 ] || sleep 1
    $TEST -k SendProgram >/dev/null || { echo "rebind: device unusable"; return 1; }
    unload_module
}

bench() {
    load_module || return 1
    $TEST --bench ${KDRIVER_BENCH_N:-200} > $OUT/kdriver-bench-last.txt
    rc=$?
    cat $OUT/kdriver-bench-last.txt | tee -a $OUT/kdriver-bench.txt
    unload_module || rc=1
    return $rc
}

# The same figures with the device in an identity IOMMU domain: DMA addresses are physical, so a
# transfer costs no vIOMMU map and unmap (each one a round trip through QEMU to the server).
bench_identity() {
    unbind
    group=/sys/bus/pci/devices/$BDF/iommu_group/type
    if [ ! -e "$group" ]; then echo "no IOMMU group: the figures above are already identity"; return 0; fi
    old=$(cat "$group")
    echo identity > "$group" || { echo "cannot switch the group from $old to identity"; return 1; }
    bench
    rc=$?
    unbind
    echo "$old" > "$group" || rc=1
    return $rc
}

# Any oops, warning or lockdep splat in the log fails the job.
kernel_log_clean() {
    dmesg > $OUT/kdriver-dmesg.txt
    if grep -E "BUG:|WARNING:|Oops|general protection|stack-protector|INFO: task .* blocked" $OUT/kdriver-dmesg.txt; then
        return 1
    fi
    echo "driver warnings and errors:"
    dmesg --level=err,warn | grep -i hermes | tail -20
}

part kdriver-build-test-prog build_test_prog
part kdriver-c-tests run_c_tests
part kdriver-c-tests-polled run_c_tests_polled
part kdriver-reclaims-leftover-slots reclaims_leftover_slots
part kdriver-unload-with-files unload_with_files
part kdriver-unbind-with-file unbind_with_file
part kdriver-bench bench
part kdriver-bench-identity-domain bench_identity
part kdriver-kernel-log kernel_log_clean
finish
