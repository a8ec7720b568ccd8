"""Guest device specs for the shared device fixtures (a pytest plugin: ``-p tests.vm.backends``).

In the VM guest the device is real (QEMU's vfio-user-pci in front of ``hermes serve`` on the
host), so the driver and library suites run over it through two specs:

* ``vfio-guest`` (``$HERMES_VM_BDF``): ``VfioTransport`` on the guest kernel's VFIO, the device
  bound to vfio-pci behind the guest's vIOMMU;
* ``devfile`` (``$HERMES_VM_DEVFILE``): the Linux kernel driver's ``/dev/hermesN`` through
  ``tests.vm.devfile``.

The device is the one the host serves, so a test asking for another geometry (engines, slots,
budget...) is skipped with the option it needed; ``$HERMES_VM_DEVICE_INFO`` is the JSON of the
host's ``hermes info`` for it. Select the specs with ``HERMES_TEST_BACKENDS=vfio-guest``.
"""
from __future__ import annotations

import json
import os

import pytest

import hermes.driver
from tests.devices import register_driver_factory, split_options
from tests.vm.devfile import DevDevice

#: Device options -> the ``hermes info`` key holding the served device's value.
_INFO_KEYS = {"engines": "engines", "program_slots": "program_slots",
              "data_slots": "data_slots", "program_slot_size": "program_slot_size",
              "data_slot_size": "data_slot_size", "interface_version": "version"}


def served_device() -> dict:
    """The host's ``hermes info`` of the served device (empty when not given)."""
    path = os.environ.get("HERMES_VM_DEVICE_INFO")
    if not path:
        return {}
    with open(path) as f:
        return json.load(f)


def require_served(device_options: dict) -> None:
    """Skip unless the served device already has every option asked for."""
    info = served_device()
    for key, value in device_options.items():
        if key == "bar4":
            continue   # the model's memory object: the served device has its own
        have = info.get(_INFO_KEYS.get(key, ""))
        if have != value:
            pytest.skip(f"needs a device with {key}={value!r}; the served device has "
                        f"{have!r} (fixed for the whole guest run)")


def vfio_guest_driver(**options: object) -> tuple:
    """A driver over the guest kernel's VFIO to the device at ``$HERMES_VM_BDF``."""
    from hermes.transport.vfio import VfioTransport
    device_options, driver_options = split_options(options)
    require_served(device_options)
    transport = VfioTransport(os.environ["HERMES_VM_BDF"])
    try:
        driver = hermes.driver.attach(transport, **driver_options)
    except BaseException:
        transport.close()
        raise
    return driver, []


def devfile_driver(**options: object) -> tuple:
    """The kernel driver's device file at ``$HERMES_VM_DEVFILE`` (a driver stand-in)."""
    device_options, driver_options = split_options(options)
    require_served(device_options)
    if driver_options:
        pytest.skip(f"driver options {sorted(driver_options)} belong to the Python driver")
    return DevDevice(os.environ["HERMES_VM_DEVFILE"]), []


if os.environ.get("HERMES_VM_BDF"):
    register_driver_factory("vfio-guest", vfio_guest_driver)
if os.environ.get("HERMES_VM_DEVFILE"):
    register_driver_factory("devfile", devfile_driver)
