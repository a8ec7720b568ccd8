"""Shared device fixtures (a pytest plugin): driver and library tests run over every device spec.

Each spec in ``DRIVER_FACTORIES`` builds a ``hermes.driver.Driver`` for a fresh device with the
given ``HermesDevice`` options (``engines``, ``program_slot_size``, ``budget``...) plus driver
options (``timeout``, ``dma_chunk``...). ``"emu"`` is the in-process model; other transports
(vfio-user) add themselves with ``register_driver_factory`` so every test using ``make_driver`` /
``hermes_device`` / ``lib_device`` runs over them too.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import pytest

import hermes.driver
from hermes.lib import DriverDevice

#: Options of ``hermes.driver.attach`` (the rest configure the device).
DRIVER_OPTIONS = ("timeout", "dma_timeout", "dma_chunk", "bounce_size")

#: A factory: (**options) -> (driver, cleanups run after the driver is closed).
DriverFactory = Callable[..., "tuple[hermes.driver.Driver, list[Callable[[], None]]]"]


def split_options(options: dict) -> tuple[dict, dict]:
    """(device options, driver options) of a ``make_driver`` call."""
    driver = {k: options[k] for k in DRIVER_OPTIONS if k in options}
    device = {k: v for k, v in options.items() if k not in DRIVER_OPTIONS}
    return device, driver


#: BAR4s larger than this get a lazily zeroed anonymous mapping instead of the model's bytearray
#: (the raw DMA tests need device memory at 0x10000000, i.e. a BAR4 past 256 MiB).
_LAZY_BAR4 = 64 << 20


def _emu(**options: object):
    from hermes.device import HermesDevice
    device_options, driver_options = split_options(options)
    get = device_options.get
    size = (get("program_slots", 16) * get("program_slot_size", 1 << 20) + 4096
            + get("data_slots", 16) * get("data_slot_size", 1 << 20))
    if size > _LAZY_BAR4 and "bar4" not in device_options:
        device_options["bar4"] = mmap.mmap(-1, size)  # the model uses the prefix it needs
    device = HermesDevice(**device_options)
    try:
        driver = hermes.driver.attach(device, **driver_options)
    except BaseException:
        device.close()
        raise
    return driver, [device.close]


#: Device spec -> driver factory. The order is the parametrization order.
DRIVER_FACTORIES: dict[str, DriverFactory] = {"emu": _emu}


def register_driver_factory(spec: str, factory: DriverFactory) -> None:
    """Run every device test over ``spec`` too (call at import time of a plugin module)."""
    DRIVER_FACTORIES[spec] = factory


def selected_specs() -> list[str]:
    """The specs device tests run over: all registered, or those named in $HERMES_TEST_BACKENDS
    (comma-separated; how the VM guest runs the suites over its real devices only)."""
    wanted = [s for s in os.environ.get("HERMES_TEST_BACKENDS", "").split(",") if s]
    unknown = [s for s in wanted if s not in DRIVER_FACTORIES and s not in LIB_BACKENDS]
    if unknown:
        raise pytest.UsageError(f"HERMES_TEST_BACKENDS names unregistered specs {unknown}; "
                                f"registered: {', '.join(DRIVER_FACTORIES)}")
    # library-only backends (cpu...) select no driver spec
    return [s for s in wanted if s in DRIVER_FACTORIES] if wanted else list(DRIVER_FACTORIES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrize at collection time so specs registered by later plugins are included.
    if "device_spec" in metafunc.fixturenames:
        metafunc.parametrize("device_spec", selected_specs(), scope="function")
    if "lib_spec" in metafunc.fixturenames:
        metafunc.parametrize("lib_spec", lib_specs(), scope="function")


@pytest.fixture
def make_driver(device_spec: str):
    """``make_driver(**options)`` -> a driver for a new device; all closed at teardown."""
    made: list = []

    def make(**options: object) -> hermes.driver.Driver:
        driver, cleanups = DRIVER_FACTORIES[device_spec](**options)
        made.append((driver, cleanups))
        return driver

    yield make
    for driver, cleanups in reversed(made):
        driver.close()
        for fn in cleanups:
            fn()


@pytest.fixture
def hermes_device(make_driver) -> hermes.driver.Driver:
    """A driver attached to a default device (4 engines, 16 + 16 slots of 1 MiB)."""
    return make_driver()


@pytest.fixture
def hermes_file(hermes_device: hermes.driver.Driver):
    """An open file on ``hermes_device`` (closed at teardown)."""
    f = hermes_device.open()
    yield f
    f.close()


@pytest.fixture
def make_lib_device(make_driver):
    """``make_lib_device(**options)`` -> a ``hermes.lib`` Device over ``make_driver``."""

    def make(**options: object) -> DriverDevice:
        device = DriverDevice(make_driver(**options))
        device.spec = "test"
        return device

    return make


@pytest.fixture
def lib_device(make_lib_device) -> DriverDevice:
    """A library Device over a default device of the current spec."""
    return make_lib_device()


# --- library backends (tests/test_contract.py) ----------------------------------------------------
#: Options of ``hermes.open("cpu")`` among the device options a test may ask for.
_CPU_OPTIONS = ("executor", "engines", "budget", "data_slot_size", "program_slot_size")


def _cpu_lib(**options: object) -> tuple[object, list[Callable[[], None]]]:
    import hermes
    return hermes.open("cpu", **{k: v for k, v in options.items() if k in _CPU_OPTIONS}), []


def _driver_lib(spec: str) -> Callable[..., tuple[object, list[Callable[[], None]]]]:
    def make(**options: object) -> tuple[object, list[Callable[[], None]]]:
        driver, cleanups = DRIVER_FACTORIES[spec](**options)
        device = DriverDevice(driver)
        device.spec = spec
        return device, cleanups
    return make


#: Library backend spec -> factory ((**device and driver options) -> (Device, cleanups run after
#: it is closed)). Every driver spec is a library backend too (a DriverDevice over it); other
#: devices (an NVMe controller...) add theirs with one ``LIB_BACKENDS[spec] = factory`` line.
LIB_BACKENDS: dict[str, Callable[..., tuple[object, list[Callable[[], None]]]]] = {
    "cpu": _cpu_lib}
LIB_BACKENDS.update(__import__("tests.nvme_devices").nvme_devices.LIB_BACKENDS)


def lib_specs() -> list[str]:
    """The library backends the behaviour suite runs over: cpu, every driver spec, and those
    added to ``LIB_BACKENDS``; only those named in $HERMES_TEST_BACKENDS when it is set."""
    known = list(LIB_BACKENDS) + [s for s in DRIVER_FACTORIES if s not in LIB_BACKENDS]
    wanted = [s for s in os.environ.get("HERMES_TEST_BACKENDS", "").split(",") if s]
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise pytest.UsageError(f"HERMES_TEST_BACKENDS names unregistered specs {unknown}; "
                                f"registered: {', '.join(known)}")
    return wanted or known


@pytest.fixture
def make_backend(lib_spec: str):
    """``make_backend(**options)`` -> a ``hermes`` Device of the current library backend (the
    test's ``lib_spec`` parameter); all closed at teardown."""
    made: list = []

    def make(**options: object):
        factory = LIB_BACKENDS.get(lib_spec) or _driver_lib(lib_spec)
        device, cleanups = factory(**options)
        made.append((device, cleanups))
        return device

    yield make
    for device, cleanups in reversed(made):
        device.close()
        for fn in cleanups:
            fn()
