"""The execution back-end is ``executor=`` (``--executor``); ``engine=`` (``--engine``) is its
deprecated spelling, which still works and warns, and ``engines=`` stays the device's count of
command processors."""
from __future__ import annotations

import warnings

import pytest

import hermes
from hermes import engine
from hermes.cli import main
from hermes.device import HermesDevice
from hermes.device.nvme import NvmeController
from hermes.engine.asm import assemble_program
from hermes.lib.cpu import CpuDevice

RET7 = assemble_program("mov r0, 7\nexit")


def _deprecated(call):
    """``call()``'s value, checking it warned once that ``engine=`` is deprecated."""
    with pytest.warns(DeprecationWarning, match="use executor=") as record:
        value = call()
    assert len(record) == 1
    assert record[0].filename == __file__, "the warning points at the caller's line"
    return value


def test_executor_names_and_default():
    assert engine.executor_names() == ["interp", "jit"]
    assert engine.DEFAULT_EXECUTOR == "jit"


@pytest.mark.parametrize("old, new", [("DEFAULT_ENGINE", "DEFAULT_EXECUTOR"),
                                      ("engine_names", "executor_names")])
def test_old_module_names_warn_and_are_the_same(old, new):
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(engine, old)
    assert value is getattr(engine, new)


@pytest.mark.parametrize("name", ["interp", "jit"])
def test_load_and_run_take_executor_without_warning(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.load(RET7, executor=name).run().return_value == 7
        assert engine.run(RET7, executor=name).return_value == 7


@pytest.mark.parametrize("name", ["interp", "jit"])
def test_load_and_run_engine_keyword_warns_and_behaves_the_same(name):
    exe = _deprecated(lambda: engine.load(RET7, engine=name))
    assert type(exe) is type(engine.load(RET7, executor=name))
    assert _deprecated(lambda: engine.run(RET7, engine=name)).return_value == 7


def test_conformance_runner_takes_the_old_keyword():
    from hermes.conformance import plugin_main
    assert _deprecated(lambda: plugin_main(RET7.to_bytes().hex(), "", engine="interp")) == (0, "7")


def test_both_spellings_that_disagree_are_a_usage_error():
    with pytest.warns(DeprecationWarning), pytest.raises(hermes.UsageError, match="disagree"):
        engine.load(RET7, executor="jit", engine="interp")


@pytest.mark.parametrize("spec", ["emu", "cpu", "nvme-emu"])
def test_open_engine_option_warns_and_behaves_the_same(spec):
    with hermes.open(spec, executor="interp") as dev:
        want = dev.run(RET7)
    with _deprecated(lambda: hermes.open(spec, engine="interp")) as dev:
        assert dev.run(RET7) == want


def test_open_engines_is_not_the_executor():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hermes.open("emu", engines=2, executor="interp") as dev:
            assert dev.engines == 2


def test_unknown_executor_message_names_executor():
    with pytest.raises(hermes.UsageError, match="unknown executor 'bogus'"):
        hermes.open("emu", executor="bogus")
    with pytest.warns(DeprecationWarning), pytest.raises(hermes.UsageError,
                                                         match="unknown executor 'bogus'"):
        hermes.open("cpu", engine="bogus")


def test_device_constructors_take_the_old_keyword():
    with _deprecated(lambda: HermesDevice(engine="interp")) as dev:
        assert dev.executor_name == "interp"
    ctrl = _deprecated(lambda: NvmeController(engine="interp"))
    assert ctrl.compute.executor == "interp"
    cpu = _deprecated(lambda: CpuDevice(engine="interp"))
    assert cpu.info()["executor"] == "interp"
    cpu.close()


@pytest.mark.parametrize("flag", ["--executor", "--engine"])
def test_cli_executor_flag_and_hidden_alias(flag, tmp_path, capsys):
    src = tmp_path / "p.s"
    src.write_text("mov r0, 7\nexit\n")
    assert main(["exec", str(src), flag, "interp"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0x7"
    assert main(["exec", str(src), flag, "bogus"]) == 2
    assert "unknown executor 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["exec", "run", "bench", "conformance",
                                     "conformance-plugin", "serve"])
def test_cli_help_shows_executor_not_engine(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--executor" in text
    assert "--engine " not in text and "--engine\n" not in text
