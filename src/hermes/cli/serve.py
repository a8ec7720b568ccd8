"""``hermes serve``: run a Hermes device model as a vfio-user server on a UNIX socket."""
from __future__ import annotations

import argparse
import grp

from . import add_executor_option


def _size(text: str) -> int:
    """Parse a byte count with an optional K/M/G suffix (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    if t[-1:] in units:
        t = t[:-1]
    try:
        value = int(t, 0) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0 or value % 8:
        raise argparse.ArgumentTypeError(f"a size must be a positive multiple of 8: {text!r}")
    return value


def _count(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}: {value}")
        return value
    return parse


def _group(text: str) -> int:
    """A group name or number -> gid."""
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        pass
    try:
        gid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"no such group: {text!r}") from None
    if gid < 0:
        raise argparse.ArgumentTypeError(f"no such group: {text!r}")
    return gid


def _seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600] seconds: {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hermes serve`` to the hermes parser."""
    p = sub.add_parser("serve", help="serve a Hermes device model over vfio-user",
                       description="Serve one emulated Hermes device over the vfio-user protocol "
                                   "on a UNIX socket, one client at a time (a client arriving "
                                   "while another holds the device is answered EBUSY), in the "
                                   "foreground. The socket is created owner-only (0600); only "
                                   "the server's user and root may connect, unless "
                                   "--socket-group is given. Stops on SIGINT/SIGTERM and "
                                   "removes the socket.")
    p.add_argument("--socket", "--socket-path", dest="socket", required=True, metavar="PATH",
                   help="UNIX socket path to listen on")
    p.add_argument("--device", choices=("hermes", "nvme-cp"), default="hermes",
                   help="the device model: the Hermes device (default) or the NVMe Computational "
                        "Programs + Subsystem Local Memory controller (specs/nvme-cp.md)")
    p.add_argument("--memory-size", type=_size, action="append", default=None, metavar="BYTES",
                   help="nvme-cp: size of one memory namespace (repeat for more; default one "
                        "of 16M)")
    p.add_argument("--engines", type=_count(1, 255), default=None,
                   help="eBPF engines (default 4)")
    p.add_argument("--slots", type=_count(1, 255), default=None,
                   help="program slots and data slots, each (default 16)")
    p.add_argument("--program-slots", type=_count(1, 255), default=None, metavar="N",
                   help="program slots (default: --slots)")
    p.add_argument("--data-slots", type=_count(1, 255), default=None, metavar="N",
                   help="data slots (default: --slots)")
    p.add_argument("--slot-size", type=_size, default=None, metavar="BYTES",
                   help="size of one program or data slot (default 1M; K/M/G suffixes)")
    p.add_argument("--program-slot-size", type=_size, default=None, metavar="BYTES",
                   help="size of one program slot (default: --slot-size)")
    p.add_argument("--data-slot-size", type=_size, default=None, metavar="BYTES",
                   help="size of one data slot (default: --slot-size)")
    add_executor_option(p, "executor of the programs (interp, jit)")
    p.add_argument("--budget", type=_count(1, (1 << 64) - 1), default=None,
                   help="instruction budget of one run")
    p.add_argument("--interface-version", type=_count(1, 2), default=None,
                   help="register layout version presented in BAR0 (default 1)")
    p.add_argument("--no-run-context", dest="run_context", action="store_const", const=False,
                   default=None,
                   help="present a device without the run context (EHCAP_RUNCTX clear): only "
                        "the legacy Run Program, as drivers before the run contract know it")
    p.add_argument("--socket-group", type=_group, default=None, metavar="GROUP",
                   help="let members of GROUP (name or gid) connect too: the socket gets mode "
                        "0660 and that group")
    p.add_argument("--stall-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="how long a client may stall inside a message, or send nothing after "
                        "connecting, or leave replies unread, before it is disconnected "
                        "(default 10)")
    p.add_argument("--irq-compat", default=None, metavar="MODE",
                   help="engine-completion interrupts: 'legacy' (default) also interrupts a "
                        "driver that never wrote the user interrupt mask since reset (the "
                        "published Linux driver); 'xdma' gates them by the mask from power-on")
    p.add_argument("--spin-us", type=_count(0, 100_000), default=None, metavar="US",
                   help="microseconds a connection polls for the client's next message before "
                        "it sleeps (default 100; 0: sleep at once, least CPU, slower round "
                        "trips)")
    p.add_argument("--verbose", "-v", action="store_true", help="trace every message")
    p.set_defaults(func=_run)


#: Options that configure only the Hermes device.
_HERMES_ONLY = ("engines", "slots", "program_slots", "data_slots", "slot_size",
                "program_slot_size", "data_slot_size", "interface_version", "irq_compat",
                "run_context")


def _run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..server.vfio_user import serve
    if args.device == "nvme-cp":
        given = [name for name in _HERMES_ONLY if getattr(args, name) is not None]
        if given:
            flag = "no-run-context" if given[0] == "run_context" else given[0].replace("_", "-")
            raise UsageError(f"--{flag} configures the Hermes device, "
                             f"not --device nvme-cp")
        kwargs: dict = {"device": "nvme-cp",
                        "memory_sizes": tuple(args.memory_size or (16 << 20,))}
    else:
        if args.memory_size:
            raise UsageError("--memory-size configures --device nvme-cp only")
        slots, slot_size = args.slots or 16, args.slot_size or 1 << 20
        kwargs = dict(engines=args.engines or 4,
                      program_slots=args.program_slots or slots,
                      data_slots=args.data_slots or slots,
                      program_slot_size=args.program_slot_size or slot_size,
                      data_slot_size=args.data_slot_size or slot_size,
                      interface_version=args.interface_version or 1)
        if args.run_context is False:
            kwargs["run_context"] = False
    if args.executor:
        kwargs["executor"] = args.executor
    if args.budget is not None:
        kwargs["budget"] = args.budget
    if args.stall_timeout is not None:
        kwargs["stall_timeout"] = args.stall_timeout
    if args.irq_compat is not None:
        kwargs["irq_compat"] = args.irq_compat
    if args.spin_us is not None:
        kwargs["spin"] = args.spin_us / 1e6
    serve(args.socket, verbose=args.verbose, socket_group=args.socket_group, **kwargs)
    return 0
