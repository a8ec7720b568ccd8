"""The interface header's codecs: each round-trips, sits where its registers say, has one home."""
from __future__ import annotations

import ast
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import hermes
from hermes import regs as R

U8, U16, U32, U64 = (st.integers(0, (1 << bits) - 1) for bits in (8, 16, 32, 64))


# --- error kinds ---------------------------------------------------------------------------------
def test_error_kinds_carry_the_published_codes():
    codes = {name[len("EBPF_ERR_"):].lower(): value for name, value in vars(R).items()
             if name.startswith("EBPF_ERR_")}
    assert {kind.value: kind.code for kind in R.ErrorKind} == codes
    assert all(kind.text for kind in R.ErrorKind)


@given(st.sampled_from(list(R.ErrorKind)), st.integers(0, (1 << 56) - 1))
def test_error_code_round_trip(kind, detail):
    code = kind.pack(detail)
    assert code & 0xFF == kind.code
    assert R.ErrorKind.unpack(code) == (kind, detail)


def test_error_kind_reads_as_its_name():
    kind = R.ErrorKind.OUT_OF_BOUNDS
    assert kind == "out_of_bounds" and str(kind) == f"{kind}" == "out_of_bounds"
    assert type(str(kind)) is str
    assert R.ErrorKind.of("budget") is R.ErrorKind.BUDGET
    assert R.ErrorKind.of("cancelled") is R.ErrorKind.INTERNAL   # no device code of its own
    assert pickle.loads(pickle.dumps(kind)) is kind


def test_unknown_error_code():
    assert R.ErrorKind.unpack(0x1234_50) == (None, 0x1234)
    assert R.ErrorKind.LOAD.pack(None) == R.EBPF_ERR_LOAD


# --- the command response ------------------------------------------------------------------------
@given(U16, U8, U64, st.integers(0, (1 << 40) - 1))
def test_response_round_trip(cmd_id, status, value, reserved):
    response = R.Response(cmd_id, status, value, reserved)
    raw = response.pack()
    assert len(raw) == R.EHCMDRES_LEN
    assert raw[0:2] == cmd_id.to_bytes(2, "little") and raw[2] == status
    assert raw[3:8] == reserved.to_bytes(5, "little") and raw[8:] == value.to_bytes(8, "little")
    assert R.Response.unpack(raw) == response
    assert R.Response.parse(raw) == response and response.raw == raw


@given(st.integers(0, (1 << 20) - 1), st.integers(0, 1023), st.integers(0, (1 << 70) - 1))
def test_response_fast_form_is_the_pack_of_its_fields(cmd_id, status, value):
    assert R.Response.pack_fields(cmd_id, status, value) == R.Response(cmd_id, status,
                                                                       value).pack()


def test_response_error_fields():
    response = R.Response(7, R.STATUS_EBPF_ERROR, R.ErrorKind.BUDGET.pack(12))
    assert response.status_name == "eBPF error"
    assert response.error_kind is R.ErrorKind.BUDGET and response.error_detail == 12
    ok = R.Response(7, R.STATUS_SUCCESS, 42)
    assert ok.error_kind is None and ok.error_detail is None
    assert R.Response(1, 0x99).status_name == "unknown status 0x99"


# --- the BAR0 header and the geometry ------------------------------------------------------------
def _geometry(version: int, **changes) -> R.Geometry:
    g = R.Geometry(version, "hermes-test 1", 4, 16, 8, 0, 1 << 20, 16 << 20, 1 << 16,
                   R.EHCAP_ABORT | R.EHCAP_RUNCTX)
    return replace(g, **changes)


def _reader(data: bytes):
    def read(offset: int, length: int) -> bytes:
        assert length % 4 == 0
        return data[offset:offset + length]
    return read


@pytest.mark.parametrize("version", R.INTERFACE_VERSIONS)
@given(engines=U8, pslots=U8, dslots=U8, caps=U8, psz=U32, dsz=U32, psoff=U32, dsoff=U32)
def test_header_round_trip(version, engines, pslots, dslots, caps, psz, dsz, psoff, dsoff):
    g = _geometry(version, engines=engines, program_slots=pslots, data_slots=dslots,
                  capabilities=caps, program_slot_size=psz, data_slot_size=dsz,
                  program_slot_offset=psoff, data_slot_offset=dsoff)
    raw = R.Header.pack(g)
    assert len(raw) == R.Header.end(version)
    assert R.Header.unpack(_reader(raw)) == g


def test_header_registers_sit_at_their_offsets():
    def u(raw: bytes, off: int, size: int) -> int:
        return int.from_bytes(raw[off:off + size], "little")

    v1 = R.Header.pack(_geometry(1))
    assert len(v1) == R.EHDSSZE + 4
    assert (u(v1, R.EHVER, 4), u(v1, R.EHENG, 1), u(v1, R.EHPSLOT, 1), u(v1, R.EHDSLOT, 1),
            u(v1, R.EHCAP, 1)) == (1, 4, 16, 8, R.EHCAP_ABORT | R.EHCAP_RUNCTX)
    assert v1[R.EHBLD:R.EHBLD + R.EHBLD_LEN] == b"hermes-test 1".ljust(R.EHBLD_LEN, b"\0")
    assert (u(v1, R.EHPSOFF, 4), u(v1, R.EHPSSZE, 4), u(v1, R.EHDSOFF, 4),
            u(v1, R.EHDSSZE, 4)) == (0, 1 << 20, 16 << 20, 1 << 16)
    v2 = R.Header.pack(_geometry(2, data_slot_offset=5 << 32))
    assert len(v2) == R.EHDSSZE_V2 + 4
    assert (u(v2, R.EHVER, 4), u(v2, R.EHPSOFF_V2, 8), u(v2, R.EHPSSZE_V2, 4),
            u(v2, R.EHDSOFF_V2, 8), u(v2, R.EHDSSZE_V2, 4)) == (2, 0, 1 << 20, 5 << 32, 1 << 16)


def test_header_refusals():
    for version in (0, 3, 0xFFFF_FFFF):
        with pytest.raises(R.InterfaceVersionError) as info:
            R.Header.unpack(_reader(version.to_bytes(4, "little") + bytes(0x60)))
        assert info.value.version == version
    with pytest.raises(ValueError, match="data_slot_offset"):
        R.Header.pack(_geometry(1, data_slot_offset=1 << 32))
    with pytest.raises(ValueError, match="build"):
        R.Header.pack(_geometry(1, build="x" * (R.EHBLD_LEN + 1)))


def test_build_string_reads_up_to_its_nul():
    raw = bytearray(R.Header.pack(_geometry(1, build="abc")))
    raw[R.EHBLD + 4] = ord("z")   # bytes past the terminating NUL are not part of the string
    assert R.Header.unpack(_reader(bytes(raw))).build == "abc"


def test_geometry_slots_and_bar4_size():
    g = _geometry(1)
    assert g.program_slot(3) == 3 << 20 and g.data_slot(2) == (16 << 20) + (2 << 16)
    assert g.bar4_size == (16 << 20) + 8 * (1 << 16)
    assert replace(g, program_slot_offset=1 << 30).bar4_size == (1 << 30) + 16 * (1 << 20)


@pytest.mark.parametrize("version", R.INTERFACE_VERSIONS)
def test_model_and_probe_agree_on_the_geometry(version):
    """The device model writes its header from its Geometry; the driver's probe reads the same
    Geometry back (with the XDMA channels it counted)."""
    from hermes.device import HermesDevice
    from hermes.driver import attach
    dev = HermesDevice(engines=3, program_slots=5, data_slots=7, interface_version=version,
                       build="agree")
    try:
        drv = attach(dev)
        try:
            assert drv.geometry == dev.geometry
            assert drv.info()["bar4_size"] == dev.geometry.bar4_size
        finally:
            drv.close()
    finally:
        dev.close()


# --- the run context -----------------------------------------------------------------------------
@given(U32, U32, st.tuples(U64, U64, U64), U64, U32, U32)
def test_run_context_in_round_trip(input_len, window, args, budget, entry, reserved):
    ctx = R.RunContextIn(input_len, window, args, budget, entry, reserved)
    raw = ctx.pack()
    assert len(raw) == R.RunContextIn.SIZE == R.CTX_OUT_FIELDS[0]
    assert R.RunContextIn.unpack(raw) == ctx
    at = {R.CTX_INPUT_LEN: (input_len, 4), R.CTX_WINDOW: (window, 4), R.CTX_ARG0: (args[0], 8),
          R.CTX_ARG1: (args[1], 8), R.CTX_ARG2: (args[2], 8), R.CTX_BUDGET: (budget, 8),
          R.CTX_ENTRY: (entry, 4), R.CTX_IN_RESERVED: (reserved, 4)}
    for off, (value, size) in at.items():
        assert raw[off:off + size] == value.to_bytes(size, "little")


def test_run_context_in_pads_args():
    assert R.RunContextIn(1, 2, (3,)).pack() == R.RunContextIn(1, 2, (3, 0, 0)).pack()


@given(st.tuples(U64, U32, U32, U64, U64, U32, U32, U32, U64))
def test_run_context_out_round_trip(values):
    out = R.RunContextOut(*values)
    raw = out.pack()
    first, end = R.CTX_OUT_FIELDS
    assert len(raw) == R.RunContextOut.SIZE == end - first
    assert R.RunContextOut.unpack(raw) == out
    offsets = (R.CTX_INSNS, R.CTX_OUTPUT_LEN, R.CTX_TRACE_LEN, R.CTX_RUN_NS, R.CTX_FAULT_ADDR,
               R.CTX_FAULT_SIZE, R.CTX_FAULT_FLAGS, R.CTX_TRACE_DROPPED, R.CTX_RUN_BUDGET)
    sizes = (8, 4, 4, 8, 8, 4, 4, 4, 8)
    for off, size, value in zip(offsets, sizes, values, strict=True):
        assert raw[off - first:off - first + size] == value.to_bytes(size, "little")


def test_run_context_out_fault_flags():
    flags = R.RunContextOut.fault_flags_of(True, 3)
    out = R.RunContextOut(fault_flags=flags)
    assert out.fault_write and out.fault_depth == 3
    assert R.RunContextOut(fault_flags=R.RunContextOut.fault_flags_of(False, 999)).fault_depth \
        == R.CTX_FAULT_DEPTH_MASK
    assert R.RunContextOut().output_len == R.CTX_NO_OUTPUT


def test_layout_wraps_integers_and_refuses_overlaps():
    layout = R.Layout(0, 8, (("a", 0, 4), ("b", 4, 2)))
    assert layout.pack(1 << 32 | 5, 7) == bytes((5, 0, 0, 0, 7, 0, 0, 0))
    assert layout.pack(-1, 1 << 16 | 3) == bytes((255, 255, 255, 255, 3, 0, 0, 0))
    assert layout.pack(5, 7) == bytes((5, 0, 0, 0, 7, 0, 0, 0))
    assert layout.overflowing(1 << 32, 7) == ["a"]
    with pytest.raises(ValueError, match="overlaps"):
        R.Layout(0, 8, (("a", 0, 4), ("b", 2, 2)))


# --- one home ----------------------------------------------------------------------------------
_KIND_NAMES = {kind.value for kind in R.ErrorKind}


def _is_kind_table(node: ast.Dict) -> bool:
    """A dict display keyed or valued by error codes (EBPF_ERR_*) or by two error kind names."""
    def code(n: ast.AST | None) -> bool:
        name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else ""
        return name.startswith("EBPF_ERR_")

    def kind(n: ast.AST | None) -> bool:
        return isinstance(n, ast.Constant) and n.value in _KIND_NAMES

    if any(code(k) or code(v) for k, v in zip(node.keys, node.values, strict=True)):
        return True
    return sum(kind(k) or kind(v) for k, v in zip(node.keys, node.values, strict=True)) >= 2


def test_no_error_kind_table_outside_regs():
    src = Path(hermes.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        if path == src / "regs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and _is_kind_table(node):
                found.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not found, f"error kind <-> code tables outside hermes.regs: {found}"
