"""The benchmarks' baseline tree: the ``--base TREE`` / ``--no-base`` options and child runs.

A benchmark compares this checkout with another one (a *tree*: a checkout whose ``src/hermes``
is the package) by running a measuring child process with that tree's ``src`` first on
``PYTHONPATH``. The child imports the other tree's ``hermes``, which may predate this module: the
code a child runs must import only what every tree has, so the scripts import this module on
their parent side alone.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Where the baseline checkout of a speed comparison is kept, when it is.
DEFAULT_BASE = Path("/tmp/base/main")
#: This checkout (the folder holding ``src/hermes``).
THIS_TREE = Path(__file__).resolve().parents[3]


class ChildError(RuntimeError):
    """A child run failed: it exited with an error, closed its output, or took too long."""


def tree_of(path: str | os.PathLike[str]) -> Path:
    """The checkout ``path`` names: a checkout itself, or its ``src`` folder (then its parent).

    Raises ValueError when ``path`` is neither.
    """
    p = Path(path).expanduser().resolve()
    if (p / "src" / "hermes").is_dir():
        return p
    if (p / "hermes").is_dir() and p.name == "src":
        return p.parent
    raise ValueError(f"{path} is not a checkout of this project (no src/hermes in it)")


def default_base() -> Path | None:
    """``DEFAULT_BASE`` when it holds a checkout (and is not this one), else None."""
    try:
        tree = tree_of(DEFAULT_BASE)
    except ValueError:
        return None
    return None if tree == THIS_TREE.resolve() else tree


def add_base_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--base TREE`` and ``--no-base`` to ``parser``; read them with ``base_tree``."""
    parser.add_argument("--base", metavar="TREE", default=None,
                        help=f"checkout to measure beside this one (default {DEFAULT_BASE} when "
                             "it holds src/hermes)")
    parser.add_argument("--no-base", action="store_true", help="measure this tree only")
    # other spellings, accepted so that existing command lines keep working
    parser.add_argument("--baseline", dest="base", help=argparse.SUPPRESS)
    parser.add_argument("--no-baseline", dest="no_base", action="store_true",
                        help=argparse.SUPPRESS)


def base_tree(opts: argparse.Namespace) -> Path | None:
    """The baseline checkout the options ask for, or None for this tree only.

    An empty ``--base`` means none; a ``--base`` that is not a checkout exits with a message.
    """
    if opts.no_base or opts.base == "":
        return None
    if opts.base is None:
        return default_base()
    try:
        return tree_of(opts.base)
    except ValueError as exc:
        raise SystemExit(f"--base: {exc}") from None


def tree_env(tree: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with ``tree``'s ``src`` first on
    ``PYTHONPATH``."""
    out = dict(os.environ if env is None else env)
    rest = out.get("PYTHONPATH")
    out["PYTHONPATH"] = str(tree / "src") + (os.pathsep + rest if rest else "")
    return out


def _command(script: str | os.PathLike[str], args: Sequence[str]) -> list[str]:
    return [sys.executable, str(script), *map(str, args)]


def run_child(tree: Path, script: str | os.PathLike[str], args: Sequence[str], *,
              timeout: float, cwd: str | os.PathLike[str] | None = None) -> str:
    """Run ``python script args`` importing ``hermes`` from ``tree``; its standard output.

    Raises ChildError when it exits with an error (its standard error's end in the message) and
    ``subprocess.TimeoutExpired`` when it runs longer than ``timeout`` seconds (it is killed).
    """
    cmd = _command(script, args)
    done = subprocess.run(cmd, env=tree_env(tree), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    if done.returncode != 0:
        raise ChildError(f"{' '.join(cmd[1:])} under {tree} exited with {done.returncode}:\n"
                         f"{done.stderr.strip()[-2000:]}")
    return done.stdout


def run_child_json(tree: Path, script: str | os.PathLike[str], args: Sequence[str], *,
                   timeout: float, cwd: str | os.PathLike[str] | None = None) -> Any:
    """``run_child``, its last non-empty output line parsed as JSON."""
    out = run_child(tree, script, args, timeout=timeout, cwd=cwd)
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise ChildError(f"{script} under {tree} printed nothing")
    return json.loads(lines[-1])


class Child:
    """A long-running child under one tree that answers one line for each line it is sent
    (to interleave the rounds of two trees); every read waits at most its timeout."""

    def __init__(self, tree: Path, script: str | os.PathLike[str], args: Sequence[str], *,
                 timeout: float) -> None:
        """Start ``python script args`` importing ``hermes`` from ``tree``."""
        self.tree, self.timeout = tree, timeout
        self._buf = b""
        self.proc = subprocess.Popen(_command(script, args), env=tree_env(tree),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout: float | None = None) -> str:
        """The child's next output line (without its newline)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                self.kill()
                raise ChildError(f"the child under {self.tree} did not answer in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.kill()
                raise ChildError(f"the child under {self.tree} exited "
                                 f"(status {self.proc.poll()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def ask(self, line: str, timeout: float | None = None) -> str:
        """Send ``line`` and return the child's answer line."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.kill()
            raise ChildError(f"the child under {self.tree} exited "
                             f"(status {self.proc.poll()})") from None
        return self.readline(timeout)

    def close(self, timeout: float = 60) -> int:
        """Close the child's input and wait for it to exit (killed after ``timeout`` s)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait(timeout)
        finally:
            self._close_pipes()

    def kill(self) -> None:
        """Stop the child at once."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)
        self._close_pipes()

    def _close_pipes(self) -> None:
        self._sel.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
