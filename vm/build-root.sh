#!/usr/bin/env bash
# Builds the guest root tree and its ext4 image from Debian's archive: build-root.sh ROOT IMAGE PIP-REQUIREMENTS
# Runs as root on the host. Every input of this recipe is hashed by vm/harness.py into the cache key,
# so any edit here (packages, suites, steps) gives a fresh root.
set -euo pipefail

ROOT=$1
IMAGE=$2
REQUIREMENTS=$3
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${HERMES_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie

# QEMU >= 10.1 (the first with the vfio-user-pci client) is only in trixie-backports. The backported
# QEMU pulls libelf1t64 from backports; linux-headers (through pahole) then needs the matching libdw1t64.
BACKPORTS_PACKAGES="qemu-system-x86 libdw1t64"
PACKAGES="linux-image-amd64 linux-headers-amd64 initramfs-tools kmod gcc make libc6-dev
          python3 python3-venv python3-pip pciutils procps util-linux nvme-cli"
VENV=/opt/hermes-venv

step() { echo "build-root: $* ($(date +%T))"; }

mounts_down() {
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$ROOT/$m"; then umount -l "$ROOT/$m"; fi
    done
}
trap mounts_down EXIT

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    step "debootstrap --variant=minbase $SUITE"
    rm -rf "$ROOT"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"
fi

cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates $SUITE-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -f "$ROOT/etc/apt/sources.list"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
echo hermes-vm > "$ROOT/etc/hostname"
# The guest never runs services: keep package scripts from starting any in the chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"

step "apt-get update"
in_root apt-get update -qq
step "install from $SUITE-backports: $BACKPORTS_PACKAGES"
in_root apt-get install -y -qq --no-install-recommends -t "$SUITE-backports" $BACKPORTS_PACKAGES
step "install: $PACKAGES"
in_root apt-get install -y -qq --no-install-recommends $PACKAGES

KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
if [ ! -f "$ROOT/boot/initrd.img-$KVER" ]; then
    in_root update-initramfs -c -k "$KVER"
fi
ln -sfn "vmlinuz-$KVER" "$ROOT/boot/vmlinuz"
ln -sfn "initrd.img-$KVER" "$ROOT/boot/initrd.img"
ln -sfn "linux-headers-$KVER" "$ROOT/usr/src/linux-headers"

step "Python venv $VENV with $(tr '\n' ' ' < "$REQUIREMENTS")"
in_root python3 -m venv "$VENV"
cp "$REQUIREMENTS" "$ROOT/tmp/requirements.txt"
# pip in the root trusts what the host trusts (a TLS-intercepting proxy's CA, for one).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/tmp/host-ca.crt"
in_root PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$VENV/bin/pip" install -q --no-cache-dir -r /tmp/requirements.txt
rm -f "$ROOT/tmp/requirements.txt" "$ROOT/tmp/host-ca.crt"

install -m 755 "$HERE/guest/init" "$ROOT/sbin/hermes-init"
mkdir -p "$ROOT/x" "$ROOT/mnt/run"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/*

mounts_down
# Room for the guest's own writes (logs, module builds, pytest caches) on top of the tree.
SIZE_MB=$(( $(du -sm "$ROOT" | cut -f1) * 5 / 4 + 512 ))
step "mke2fs ${SIZE_MB} MiB image"
rm -f "$IMAGE.tmp"
mke2fs -q -t ext4 -L hermes-root -d "$ROOT" "$IMAGE.tmp" "${SIZE_MB}M"
mv "$IMAGE.tmp" "$IMAGE"
step "done: $(du -sh "$ROOT" | cut -f1) tree, ${SIZE_MB} MiB image"
