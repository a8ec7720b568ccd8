"""Write hermes_regs.h, the C view of hermes.regs: the kernel driver and Python share one map.

Run from the checkout: ``.venv/bin/python drivers/linux/gen_regs_h.py`` rewrites the header beside
this script; ``--check`` exits 1 when the committed header differs from what hermes.regs gives.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hermes import regs

HEADER = Path(__file__).with_name("hermes_regs.h")

# Register offsets computed from a base and a stride in hermes.regs; restated as macros here so
# the C side has the same formulas without a second copy of the numbers.
_MACROS = """\
#define HERMES_CMDREQ(n) (HERMES_EHCMDREQ_BASE + HERMES_EHCMD_STRIDE * (n))
#define HERMES_CMDRES(n) (HERMES_EHCMDRES_BASE + HERMES_EHCMD_STRIDE * (n))
#define HERMES_CMDCTRL(n) (HERMES_EHCMDCTRL_BASE + HERMES_EHCMDCTRL_STRIDE * (n))
#define HERMES_XDMA_OFFSET(target, channel, reg) (((target) << 12) | ((channel) << 8) | (reg))
#define HERMES_DESC_CONTROL(adjacent, flags) \\
\t(((u32)HERMES_DESC_MAGIC << 16) | (((adjacent) & 0x3F) << 8) | (flags))
"""


def _c_table(name: str, entries: dict[int, str]) -> str:
    """A designated-initializer list macro: ``{ [key] = "text", ... }``."""
    items = "".join(f' \\\n\t[{key:#x}] = "{text}",' for key, text in sorted(entries.items()))
    return f"#define {name} {{{items} \\\n}}"


def render() -> str:
    """The header text: every integer constant of hermes.regs as a HERMES_ macro, the formulas,
    and the status and eBPF error texts the driver's messages use."""
    lines = ["/* SPDX-License-Identifier: GPL-2.0 */",
             "/* The Hermes register interface for C: generated from hermes.regs by gen_regs_h.py,"
             " do not edit. */",
             "#ifndef HERMES_REGS_H", "#define HERMES_REGS_H", ""]
    for name, value in vars(regs).items():
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"#define HERMES_{name} {value:#x}")
    kinds = {kind.code: kind.text for kind in regs.ErrorKind}
    lines += ["", _MACROS.rstrip("\n"), "",
              _c_table("HERMES_STATUS_TEXTS", regs.STATUS_NAMES),
              _c_table("HERMES_EBPF_ERROR_TEXTS", kinds),
              "", "#endif /* HERMES_REGS_H */", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write the header, or with ``--check`` report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if hermes_regs.h differs from hermes.regs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = HEADER.read_text() if HEADER.exists() else ""
        if current != text:
            print(f"{HEADER} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    HEADER.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
