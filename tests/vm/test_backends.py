"""Host-side checks of how the guest selects its device specs (the suites run in the VM)."""
from __future__ import annotations

import json

import pytest

from tests import devices
from tests.vm import backends


def test_backends_env_selects_specs(monkeypatch):
    monkeypatch.setenv("HERMES_TEST_BACKENDS", "emu")
    assert devices.selected_specs() == ["emu"]
    monkeypatch.delenv("HERMES_TEST_BACKENDS")
    assert devices.selected_specs() == list(devices.DRIVER_FACTORIES)


def test_backends_env_names_an_unknown_spec(monkeypatch):
    monkeypatch.setenv("HERMES_TEST_BACKENDS", "emu,no-such-spec")
    with pytest.raises(pytest.UsageError, match="no-such-spec"):
        devices.selected_specs()


def test_a_geometry_the_served_device_lacks_skips(monkeypatch, tmp_path):
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"engines": 4, "data_slots": 16, "version": 1}))
    monkeypatch.setenv("HERMES_VM_DEVICE_INFO", str(info))
    backends.require_served({"engines": 4, "interface_version": 1, "bar4": object()})
    with pytest.raises(pytest.skip.Exception, match="engines=2"):
        backends.require_served({"engines": 2})
    with pytest.raises(pytest.skip.Exception, match="budget"):
        backends.require_served({"budget": 1000})
