# Shared by every guest job (sourced by /x/job.sh): environment, the device's address, helpers.
export PATH=/opt/hermes-venv/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=/x/src:/x
export PYTHONDONTWRITEBYTECODE=1
export HERMES_SHARED=/x/shared
export HYPOTHESIS_PROFILE=ci
OUT=/x/out
FAILED=""

# PCI address of the Hermes function (vendor 1de5, device 3000).
BDF=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1de5 ] && [ "$(cat "$d/device")" = 0x3000 ]; then
        BDF=$(basename "$d")
    fi
done
echo "guest: kernel $(uname -r), Hermes device at ${BDF:-none}, $(nproc) CPUs"

# part NAME COMMAND...: run one part of the job, log its status, remember a failure.
part() {
    name=$1; shift
    echo "=== $name"
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$@"
    rc=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    secs=$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}')
    if [ $rc -eq 0 ]; then status=passed; else status="FAILED (exit $rc)"; FAILED="$FAILED $name"; fi
    echo "=== $name: $status in ${secs} s"
    echo "$name $rc $secs" >> $OUT/parts
}

# Bind the device to vfio-pci (behind the guest's vIOMMU; see specs/vm.md).
bind_vfio() {
    modprobe vfio-pci || return 1
    drv=/sys/bus/pci/devices/$BDF/driver
    if [ -e "$drv" ]; then echo "$BDF" > "$drv/unbind"; fi
    echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
    echo "$BDF" > /sys/bus/pci/drivers_probe
    [ "$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")" = vfio-pci ] || return 1
    echo "vfio: $BDF bound to vfio-pci, $(ls /dev/vfio | tr '\n' ' ')"
}

unbind() {
    drv=/sys/bus/pci/devices/$BDF/driver
    if [ -e "$drv" ]; then echo "$BDF" > "$drv/unbind"; fi
    echo > /sys/bus/pci/devices/$BDF/driver_override
}

# Load the project's kernel driver (built on the host in the root against this kernel).
load_module() {
    if [ ! -d /x/kmod ]; then echo "no drivers/linux in the checkout"; return 2; fi
    if [ -f /x/kmod/BUILD-FAILED ]; then echo "the module did not build (see kmod-build.log)"; return 1; fi
    ko=$(ls /x/kmod/*.ko 2>/dev/null | head -1)
    [ -n "$ko" ] || { echo "no .ko built"; return 1; }
    unbind
    insmod "$ko" || return 1
    for i in $(seq 50); do [ -e /dev/hermes0 ] && break; sleep 0.1; done
    [ -e /dev/hermes0 ] || { echo "no /dev/hermes0 after insmod"; dmesg | tail -20; return 1; }
    echo "module $(basename "$ko") loaded: $(ls /dev/hermes*)"
}

unload_module() {
    ko=$(ls /x/kmod/*.ko 2>/dev/null | head -1)
    [ -n "$ko" ] && rmmod "$(basename "$ko" .ko)"
}

# --- the parts of the jobs ----------------------------------------------------------------------
TEST_INFO="HERMES_VM_DEVICE_INFO=/x/host-info.json"

# Library and driver suites over the `vfio` transport (device bound to vfio-pci).
run_lib() {
    bind_vfio || return 1
    env $TEST_INFO HERMES_TEST_BACKENDS=vfio-guest HERMES_VM_BDF=$BDF \
        HERMES_CONTRACT_OBJECTS=/x/bpf/contract \
        sh -c 'cd /x && python -m pytest -p no:cacheprovider -q -p tests.vm.backends -rs \
               tests/test_lib.py tests/test_contract.py tests/test_ranges.py tests/test_driver.py \
               tests/test_driver_robustness.py'
}

# The NVMe CP/SLM controller (PCI 1de5:3100) bound to the guest's nvme driver: identify data,
# nvme-cli by hand, and the library's behaviour suite over the passthrough backend.
run_nvme() {
    modprobe nvme || return 1
    for i in $(seq 100); do ls /dev/ng*n2 >/dev/null 2>&1 && break; sleep 0.1; done
    # The kernel numbers ngXnY in the order it sets namespaces up, not by NSID: ask each.
    dev=$(cd /x && python -c 'import glob; from hermes.driver.nvme import namespace_devices as d
print(d(sorted(glob.glob("/dev/ng*n*"))[0]).get(1, ""))' 2>&1)
    [ -c "$dev" ] || { echo "no NSID 1 device: $dev"; dmesg | grep -i nvme | tail -20; return 1; }
    echo "nvme: $(nvme version 2>&1 | head -1); compute namespace $dev"
    env HERMES_NVME_DEVICE=$dev HERMES_TEST_BACKENDS=nvme \
        HERMES_CONTRACT_OBJECTS=/x/bpf/contract \
        sh -c 'cd /x && python -m pytest -p no:cacheprovider -q -rs \
               tests/vm/test_nvme_guest.py tests/test_contract.py tests/test_ranges.py'
    rc=$?
    echo "nvme: kernel messages:"; dmesg | grep -i nvme | tail -20
    return $rc
}

# The driver-interface cases over /dev/hermes0 through the project's kernel driver.
run_driver() {
    load_module || return 1
    env $TEST_INFO HERMES_TEST_BACKENDS=devfile HERMES_VM_DEVFILE=/dev/hermes0 \
        sh -c 'cd /x && python -m pytest -p no:cacheprovider -q -p tests.vm.backends -rs \
               tests/test_driver.py tests/test_driver_robustness.py'
    rc=$?
    unload_module || rc=1
    return $rc
}

# The C examples (clang -target bpf on the host) through `hermes run --device vfio:` and the file.
examples_vfio() { bind_vfio && python -m tests.vm.examples vfio "$BDF" /x/bpf; }
examples_devfile() {
    load_module || return 1
    python -m tests.vm.examples devfile /dev/hermes0 /x/bpf
    rc=$?
    unload_module || rc=1
    return $rc
}

# Figures: 1 MiB write+read, fsync round trip (medians), through the file and over VFIO.
bench_devfile() {
    load_module || return 1
    python -m tests.vm.bench devfile /dev/hermes0 ${BENCH_ROUNDS:-200} | tee -a $OUT/bench.txt
    rc=$?
    unload_module || rc=1
    return $rc
}
# The device in an identity IOMMU domain while CMD runs: the kernel driver's DMA addresses are then
# guest-physical and a transfer costs no vIOMMU map/unmap (each a round trip to the server).
with_identity_domain() {
    unbind
    group=/sys/bus/pci/devices/$BDF/iommu_group/type
    old=$(cat "$group")
    echo identity > "$group" || { echo "cannot switch the IOMMU group from $old to identity"; return 1; }
    "$@"
    rc=$?
    unbind
    echo "$old" > "$group" || rc=1
    return $rc
}
bench_devfile_identity() { with_identity_domain bench_devfile; }
bench_vfio() { bind_vfio && python -m tests.vm.bench vfio "$BDF" ${BENCH_ROUNDS:-200} | tee -a $OUT/bench.txt; }

finish() {
    echo "guest: parts failed:${FAILED:- none}"
    [ -z "$FAILED" ]
}
