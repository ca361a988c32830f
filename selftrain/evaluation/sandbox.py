"""Run generated Python against its tests inside a bubblewrap sandbox.

Generated code is hostile: it may loop, fork, allocate, flood output, write files, dial out,
read secrets, or exit early so the tests never run. So each run gets fresh namespaces, a
read-only view of the interpreter, a small tmpfs as its only writable place, a dedicated
unprivileged uid (the jail itself is built in `bwrap.py`), rlimits, a pids cgroup where the
machine has one (`cgroups.py`), and a wall clock.

How a pass is decided, and what that can and cannot prove
---------------------------------------------------------
A run passes only when a per-run random nonce reaches a private status pipe after the tests
finished without raising. The nonce is never in the sandboxed process's memory while the
program or the tests run: it waits in an inherited pipe that the bootstrap reads only in the
`else:` branch after the tests, and writes straight on to the status pipe. So early exits
(`os._exit(0)`, `sys.exit`), printed or forged sentinels, and digging through the bootstrap's
frames (`sys._getframe(1).f_locals`) or the garbage collector's objects find nothing to forge
a pass with (tests/test_sandbox.py runs each of these).

What it cannot stop, said plainly: the tests run in the program's own process, so a program
written to cheat can still fake a pass. It can read the nonce pipe itself (its descriptor is
listed in /proc/self/fd) and copy the nonce to the status pipe, patch what the tests call,
or return objects whose `__eq__` is always true. No in-process signal can prove that the tests
ran, because the program can send any signal the tests could. The sandbox's guarantee is
containment: whatever the program does, it stays inside its run and cannot touch the host
or other runs. Scores are trustworthy against models that make mistakes, not against code
crafted to game the harness; a gate that must resist that needs the tests in another
process, comparing values the program returns through a pipe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import resource
import secrets
import selectors
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from selftrain.evaluation.bwrap import PYTHON_FLAGS, SANDBOX_USER, bwrap_command, interpreter, isolation_available
from selftrain.evaluation.cgroups import destroy_cgroup, new_cgroup, spawn_in

log = logging.getLogger(__name__)

_MAX_PIDS = 64                 # processes + threads one run may hold (cgroup pids.max)
_MAX_FILE_BYTES = 16 << 20     # RLIMIT_FSIZE: largest file a program may write
_STATUS_BYTES = 4096           # the status pipe only ever carries three short lines
_STARTED = b"selftrain-sandbox-started"
_SOLUTION_RAN = b"selftrain-solution-ran"

# Runs inside the sandbox: argv carries the status pipe's and the nonce pipe's descriptors, stdin
# "<solution length> <rlimit triples...>\n<solution><tests>". The prologue up to the first `run`
# is ours, so that is where the rlimits are set: doing it in the child between fork and exec
# would need a preexec_fn, which makes every spawn a full fork of this (possibly huge) process.
# Tools the program could monkeypatch (exec, compile, os.write, os.read, settrace) are bound as
# defaults before it runs, and the nonce is read from its pipe only in the `else:` of a try that
# wraps program and tests, so any exception, sys.exit or os._exit before the tests finish leaves
# it unread and unwritten.
_BOOTSTRAP = r"""
import os, resource, sys
def main(write=os.write, read=os.read, run=exec, build=compile, trace=sys.settrace, profile=sys.setprofile):
    header, _, body = sys.stdin.buffer.read().partition(b"\n")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    split, *limits = map(int, header.split())
    for at in range(0, len(limits), 3):
        resource.setrlimit(limits[at], (limits[at + 1], limits[at + 2]))
    sources = (("solution.py", body[:split].decode()), ("tests.py", body[split:].decode()))
    del header, body, limits
    write(int(sys.argv[1]), b"%s\n")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for name, text in sources:
            trace(None), profile(None)  # a tracer could otherwise jump over the asserts
            run(build(text, name, "exec", dont_inherit=True, optimize=0), namespace)
            if name == "solution.py":
                write(int(sys.argv[1]), b"%s\n")
    except SystemExit:
        raise
    except BaseException as error:
        import linecache, traceback  # only now: together they cost more startup time than Python itself
        for name, text in sources:
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        raise SystemExit(1)
    else:
        write(int(sys.argv[1]), read(int(sys.argv[2]), 256))
main()
""" % (_STARTED.decode(), _SOLUTION_RAN.decode())


@dataclass(frozen=True)
class ExecutionResult:
    status: str             # "passed" | "failed" | "timeout" | "infra_error" (the sandbox itself broke)
    passed: bool            # True only when the tests ran to the end without raising
    exit_code: int | None   # None when killed at the deadline
    stdout: str             # at most max_output_bytes of it
    stderr: str             # likewise; tracebacks, and bubblewrap's own errors, land here
    duration_s: float       # wall clock from handing over the program to its exit (or the deadline)
    solution_ran: bool = False  # the program itself ran without raising (before the tests); the
                                # program could forge this marker, so it is a diagnostic, never a pass


class SandboxUnavailable(RuntimeError):
    """Raised instead of running generated code without isolation when nobody asked for that."""


class Sandbox:
    """Runs programs with their tests, one sandbox per run, `workers` at a time in run_many."""

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 1024, max_output_bytes: int = 1 << 20,
                 workers: int = 2, allow_unsafe_execution: bool = False, retries: int = 2):
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_output_bytes = max_output_bytes
        self.workers = max(1, workers)
        self.allow_unsafe_execution = allow_unsafe_execution
        self.retries = max(0, retries)

    def run(self, program: str, tests: str = "") -> ExecutionResult:
        """Run `program`, then `tests` in the same namespace; infrastructure failures are retried."""
        return self._run(program, tests, contextlib.nullcontext())

    def run_many(self, items: list[tuple[str, str]]) -> list[ExecutionResult]:
        """Run (program, tests) pairs, `workers` programs at a time; results come back in input order.

        Twice as many threads as workers each start a sandbox, but a program runs (and its
        deadline starts) only once one of `workers` slots is free. So bubblewrap's and Python's
        start-up, which is mostly waiting, overlaps with other programs' tests instead of adding
        to them; every run still gets a sandbox of its own.
        """
        slots = threading.BoundedSemaphore(self.workers)
        # Threads suffice: each one only waits on its own subprocess.
        with ThreadPoolExecutor(max_workers=2 * self.workers) as pool:
            return list(pool.map(lambda item: self._run(*item, slots), items))

    def _run(self, program: str, tests: str, slot) -> ExecutionResult:
        isolated = isolation_available()
        if not isolated and not self.allow_unsafe_execution:
            raise SandboxUnavailable(
                f"Cannot isolate generated code here: the sandbox needs root (to switch to the {SANDBOX_USER!r} "
                "user), setpriv and a working bubblewrap (bwrap); install them or pass "
                "allow_unsafe_execution=True to run it unsandboxed.")
        if not isolated:
            _warn_unsafe_once()
        for _ in range(self.retries + 1):
            result = self._attempt(program, tests, isolated, slot)
            if result.status != "infra_error":
                break
        return result

    def _attempt(self, program: str, tests: str, isolated: bool, slot) -> ExecutionResult:
        nonce = secrets.token_hex(16).encode()
        source = program.encode(errors="replace")
        limits = b" ".join(b"%d %d %d" % limit for limit in self._rlimits(isolated))
        payload = b"%d %s\n" % (len(source), limits) + source + tests.encode(errors="replace")
        start = time.monotonic()
        # Unisolated runs need a scratch directory of their own; bwrap brings its tmpfs.
        with contextlib.nullcontext("/") if isolated else tempfile.TemporaryDirectory(prefix="selftrain-") as home:
            status_r, status_w = os.pipe()
            nonce_r, nonce_w = os.pipe()
            os.write(nonce_w, nonce + b"\n")  # 33 bytes: far below the pipe's buffer, so it never blocks
            os.close(nonce_w)
            cgroup = new_cgroup(_MAX_PIDS) if isolated else None
            try:
                try:
                    python = [interpreter()[0], *PYTHON_FLAGS, "-c", _BOOTSTRAP, str(status_w), str(nonce_r)]
                    # No preexec_fn: without one, subprocess spawns with vfork (see cgroups.py).
                    proc = spawn_in(cgroup, lambda: subprocess.Popen(
                        bwrap_command(python) if isolated else python,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        pass_fds=(status_w, nonce_r), cwd=home, env={"PATH": "/usr/bin:/bin", "HOME": home},
                        start_new_session=True))
                finally:
                    os.close(status_w)
                    os.close(nonce_r)
                # Started, and waiting for its payload: nothing of the program has run yet. The run
                # keeps its slot until every process of it is reaped, so the processes of at most
                # `workers` programs ever count against RLIMIT_NPROC.
                with slot:
                    try:
                        start = time.monotonic()
                        out, err, status, timed_out = _communicate(proc, payload, status_r,
                                                                   start + self.timeout_s, self.max_output_bytes)
                        duration = time.monotonic() - start
                    finally:
                        _end_run(proc, isolated)
            except (OSError, subprocess.SubprocessError) as error:
                return ExecutionResult("infra_error", False, None, "", f"The sandbox failed to run: {error}",
                                       time.monotonic() - start)
            finally:
                os.close(status_r)
                destroy_cgroup(cgroup)
        lines = status.splitlines()
        started, passed = lines[:1] == [_STARTED], nonce in lines
        return ExecutionResult(
            status="timeout" if timed_out else "passed" if passed else "failed" if started else "infra_error",
            passed=passed and not timed_out, exit_code=None if timed_out else proc.returncode,
            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"), duration_s=duration,
            solution_ran=_SOLUTION_RAN in lines)

    def _rlimits(self, isolated: bool) -> list[tuple[int, int, int]]:
        """(resource, soft, hard) triples the bootstrap sets before the program runs."""
        # CPU gets a one-second gap so the soft limit's SIGXCPU can fire before the hard SIGKILL.
        cpu = math.ceil(self.timeout_s) + 1
        limits = [(resource.RLIMIT_AS, self.memory_mb << 20, self.memory_mb << 20),
                  (resource.RLIMIT_CPU, cpu, cpu + 1),
                  (resource.RLIMIT_FSIZE, _MAX_FILE_BYTES, _MAX_FILE_BYTES),
                  (resource.RLIMIT_NOFILE, 64, 64), (resource.RLIMIT_CORE, 0, 0)]
        if isolated:
            # NPROC counts every process of the sandbox uid, so it is the budget of all concurrent runs
            # (plus one waiting bootstrap per worker, see run_many); without isolation the uid is the
            # caller's own and the limit would hit the caller.
            nproc = (_MAX_PIDS + 1) * self.workers
            limits.append((resource.RLIMIT_NPROC, nproc, nproc))
        return limits


@functools.cache
def _warn_unsafe_once() -> None:
    message = ("selftrain is running generated code WITHOUT a sandbox (allow_unsafe_execution=True): "
               "only rlimits and a timeout stand between it and this machine.")
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


def _communicate(proc: subprocess.Popen, payload: bytes, status_fd: int, deadline: float,
                 cap: int) -> tuple[bytes, bytes, bytes, bool]:
    """Feed the payload, drain stdout, stderr and the status pipe, and wait for the exit, until
    all of that is done or the deadline passes (then the last item is True). Bytes past the cap
    are read and dropped, so a flood of output costs the program its time, not our memory, and
    it never blocks on a full pipe."""
    stdin, exited = proc.stdin.fileno(), os.pidfd_open(proc.pid)
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_fd: bytearray()}
    caps = {fd: _STATUS_BYTES if fd == status_fd else cap for fd in kept}
    pending = memoryview(payload)
    os.set_blocking(stdin, False)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_WRITE)
        selector.register(exited, selectors.EVENT_READ)
        for fd in kept:
            selector.register(fd, selectors.EVENT_READ)
        try:
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return *(bytes(b) for b in kept.values()), True
                for key, _ in selector.select(remaining):
                    if key.fd == exited:
                        # Exited but not reaped: its process group is still ours to kill, which ends
                        # any leftover of an unisolated run that holds our pipes open.
                        _kill_group(proc)
                        selector.unregister(exited)
                    elif key.fd == stdin:
                        try:
                            pending = pending[os.write(stdin, pending[:1 << 16]):]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:  # it died before reading its input
                            pending = pending[:0]
                        if not pending:
                            selector.unregister(stdin)
                            proc.stdin.close()
                    else:
                        data = os.read(key.fd, 1 << 16)
                        if not data:
                            selector.unregister(key.fd)
                        kept[key.fd] += data[:max(0, caps[key.fd] - len(kept[key.fd]))]
        finally:
            os.close(exited)
    return *(bytes(b) for b in kept.values()), False


def _end_run(proc: subprocess.Popen, isolated: bool) -> None:
    """Kill whatever is left of a run and reap it, so nothing of it outlives this call.

    Isolated, we SIGKILL the pid namespace's init (bwrap's one child) rather than bwrap: the kernel
    then kills every process in the namespace, the init finishes exiting only once all of them are
    reaped, and bwrap reaps the init before it exits. Killing bwrap instead would leave that
    teardown to the host's init, with a fork bomb's dying children still holding RLIMIT_NPROC slots
    when the next run starts."""
    if isolated:
        children = _children(proc.pid)  # none once bwrap has exited (it reaped the init first)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
                return
    _kill_group(proc)  # not reaped yet, so the group is still this run's
    proc.wait()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group: bwrap and its pid-namespace init, whose death takes down
    every process in the namespace (double-forked daemons included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
