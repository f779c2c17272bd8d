"""Preloaded ``gateway`` processes for the tests: forked from a process that imported the gateway once.

A ``gateway serve`` spends about 1.3 of its 2 CPU seconds to "ready" importing its modules, and the suite
starts some 170 of them (issue 14, item 7). Each pytest worker therefore keeps one *preloader*
(``python -m tests.preloaded SOCKET``): a single-threaded process that has imported the whole ``gateway``
package and forks a child per launch. The child takes the test's standard streams (passed as file
descriptors over a Unix socket), environment, working directory and ``argv``, replaces ``__main__`` with
the console script as a fresh interpreter has it, and runs ``gateway.cli.main()`` -- the same code a
fresh ``gateway`` runs after its imports -- then ends through the interpreter's normal exit (threads
joined, ``atexit`` handlers, streams flushed). Signals go to the child's pid as to any process; the
preloader reports its exit status and CPU time (``wait4``) back on the launch's socket.

What this does not exercise, the console script started by ``exec`` itself: ``tests/e2e/test_serve.py``,
``tests/e2e/test_nodes.py`` (``--workers``, whose workers the supervisor starts by ``exec``) and the
deployment tests start real processes, and ``GATEWAY_TEST_PRELOAD=0`` makes every launch one.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import importlib
import io
import json
import os
import pkgutil
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ENABLED = os.environ.get("GATEWAY_TEST_PRELOAD", "1") != "0"

CHILD_CPU = [0.0]
"""CPU seconds (user + system, with their own children) of preloaded processes that ended and were
waited for: ``tests.cpu`` adds them as it adds the children a test process waited for itself."""

_MAX_REQUEST = 1 << 20


# --- the preloader (its own process) ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str


def _preload() -> None:
    """Import every module of the gateway, as a ``gateway serve`` ends up having imported them."""
    import gateway

    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if ".migrations" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    # A fork copies only the thread that forks: a helper thread started by an import would be missing
    # in every child, with whatever lock it held still held.
    assert threading.active_count() == 1, threading.enumerate()


def _receive(connection: socket.socket) -> tuple[_Launch, list[int]]:
    fds = array.array("i")
    message, ancillary, _flags, _address = connection.recvmsg(
        _MAX_REQUEST, socket.CMSG_SPACE(3 * fds.itemsize)
    )
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    request = json.loads(message)
    return _Launch(request["argv"], request["env"], request["cwd"]), list(fds)


def _serve(listener: socket.socket) -> _Launch:
    """Fork a child per launch until the test process closes our stdin; returns only in a child."""
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # Ctrl-C reaches the whole process group: the test process ends, and with it our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, socket.socket] = {}
    while True:
        readable, _, _ = select.select([listener, sys.stdin, wakeup_read], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 4096):
            for pid in children:  # the test process is gone: so are its gateways
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sys.exit(0)
        if wakeup_read in readable:
            os.read(wakeup_read, 4096)
            _report_ended(children)
        if listener in readable:
            connection, _ = listener.accept()
            launch, fds = _receive(connection)
            pid = os.fork()
            if pid == 0:
                for fd, target in zip(fds, (0, 1, 2), strict=True):
                    os.dup2(fd, target)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                # Closed as objects first (closed only by number, a socket object would close whatever
                # later reuses its number when it is collected); then every other descriptor, so the
                # child has its standard streams only, as subprocess.Popen(close_fds=True) leaves one.
                for held in (listener, connection, *children.values()):
                    held.close()
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                return launch
            for fd in fds:
                os.close(fd)
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            children[pid] = connection


def _report_ended(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is None:
            continue
        report = {
            "returncode": os.waitstatus_to_exitcode(status),
            "cpu": usage.ru_utime + usage.ru_stime,
        }
        with contextlib.suppress(OSError):  # the test stopped listening
            connection.sendall(json.dumps(report).encode() + b"\n")
        connection.close()


def _become(launch: _Launch) -> None:
    """Turn the forked child into ``gateway`` started as ``launch`` says, and run it to its exit."""
    os.environ.clear()
    os.environ.update(launch.env)
    os.chdir(launch.cwd)
    # The standard streams are on the test's descriptors now (dup2); unbuffered if the test asked for
    # it, as the interpreter would have made them from PYTHONUNBUFFERED.
    unbuffered = bool(launch.env.get("PYTHONUNBUFFERED"))
    for stream in (sys.stdout, sys.stderr):
        assert isinstance(stream, io.TextIOWrapper)
        stream.reconfigure(write_through=unbuffered)
    sys.argv = list(launch.argv)
    sys.path[0] = str(Path(launch.argv[0]).parent)
    # multiprocessing's fork server (the parse pools) runs the main script again in every worker; as for
    # a fresh `gateway`, that is the console script, not this module.
    main = types.ModuleType("__main__")
    main.__file__ = launch.argv[0]
    sys.modules["__main__"] = main
    from gateway.cli import main as gateway_main

    sys.exit(gateway_main())


def preloader(path: str) -> None:
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    launch = _serve(listener)
    _become(launch)


# --- the test process's side -----------------------------------------------------------------------------


class _Preloader:
    """This test process's preloader, started on first use and ended with the process."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="gw-preload-")
        self.path = os.path.join(self.directory, "launch")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.preloaded", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the preloader did not start ({self.process.wait()}): {ready!r}")
        atexit.register(self.close)

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.directory)


_preloader: _Preloader | None = None


class PreloadedProcess:
    """A ``gateway`` the preloader forked: the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, stderr_pipe: bool = True) -> None:
        global _preloader
        if _preloader is None:
            _preloader = _Preloader()
        self.args = list(argv)
        self.returncode: int | None = None
        self.stderr: IO[str] | None = None
        stderr_read, stderr_write = os.pipe() if stderr_pipe else (None, os.dup(2))
        stdin = os.open(os.devnull, os.O_RDONLY)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.connect(_preloader.path)
            request = json.dumps({"argv": self.args, "env": dict(env), "cwd": os.getcwd()}).encode()
            fds = array.array("i", [stdin, 1, stderr_write])
            self._socket.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        finally:
            os.close(stdin)
            os.close(stderr_write)
        self._answers = self._socket.makefile("r", encoding="utf-8")
        self.pid = int(json.loads(self._answers.readline())["pid"])
        if stderr_read is not None:
            self.stderr = open(stderr_read, encoding="utf-8", errors="replace")  # noqa: SIM115  (the caller closes it)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._socket], [], [], 0)[0]:
            self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._socket], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._ended()
        assert self.returncode is not None
        return self.returncode

    def _ended(self) -> None:
        line = self._answers.readline()
        self._answers.close()
        self._socket.close()
        report: dict[str, Any] = json.loads(line) if line else {"returncode": -signal.SIGKILL, "cpu": 0.0}
        self.returncode = int(report["returncode"])
        CHILD_CPU[0] += float(report["cpu"])

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch_gateway(argv: Sequence[str], env: Mapping[str, str]) -> PreloadedProcess | subprocess.Popen[str]:
    """``argv`` (the ``gateway`` console script and its arguments) with its standard error on a pipe:
    preloaded, or a fresh process with ``GATEWAY_TEST_PRELOAD=0``."""
    if ENABLED:
        return PreloadedProcess(argv, env)
    return subprocess.Popen(list(argv), stderr=subprocess.PIPE, text=True, env=dict(env))


if __name__ == "__main__":
    preloader(sys.argv[1])
