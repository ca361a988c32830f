"""Run generated Python against its tests inside a bubblewrap sandbox.

Generated code is hostile: it may loop, fork, allocate, flood output, write files, dial out,
read secrets, or exit early so the tests never run. So each run gets fresh namespaces, a
read-only view of the interpreter, a small tmpfs as its only writable place, a dedicated
unprivileged uid, rlimits, a pids cgroup where the machine has one, and a wall clock.

A run passes only when a per-run random nonce, which the program cannot forge by printing,
reaches a private status pipe after the tests finished without raising.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pwd
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

SANDBOX_USER = "selftrain-sandbox"
_MAX_PIDS = 64                 # processes + threads one run may hold (cgroup pids.max)
_MAX_FILE_BYTES = 16 << 20     # RLIMIT_FSIZE: largest file a program may write
_TMPFS_BYTES = 64 << 20        # the whole writable tmpfs; it is RAM, so it is capped
_STATUS_BYTES = 4096           # the status pipe only ever carries two short lines
_STARTED = b"selftrain-sandbox-started"
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")

# Runs inside the sandbox. The nonce and the tests arrive on stdin and then live only in this
# frame, never in a file, argv or the environment. Tools the program could monkeypatch
# (exec, compile, os.write, settrace) are bound as defaults before it runs, and the nonce is
# written only from the `else:` of a try that wraps program and tests, so any exception,
# sys.exit or os._exit before the tests finish leaves it unwritten.
_BOOTSTRAP = r"""
import linecache, os, sys
def main(status_fd, write=os.write, run=exec, build=compile, trace=sys.settrace, profile=sys.setprofile):
    header, _, body = sys.stdin.buffer.read().partition(b"\n")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    nonce, split = header.split()
    sources = (("solution.py", body[:int(split)]), ("tests.py", body[int(split):]))
    del header, body
    write(status_fd, b"%s\n")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for name, source in sources:
            text = source.decode()
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)
            trace(None), profile(None)  # a tracer could otherwise jump over the asserts
            run(build(text, name, "exec", dont_inherit=True, optimize=0), namespace)
    except SystemExit:
        raise
    except BaseException as error:
        import traceback
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        raise SystemExit(1)
    else:
        write(status_fd, nonce + b"\n")
main(int(sys.argv[1]))
""" % _STARTED.decode()


@dataclass(frozen=True)
class ExecutionResult:
    status: str
    """"passed", "failed", "timeout" or "infra_error" (the sandbox itself failed to start)."""
    passed: bool
    """True only when the tests ran to the end without raising."""
    exit_code: int | None
    """The program's exit code; None when it never started or was killed at the deadline."""
    stdout: str
    """At most max_output_bytes of what the program printed."""
    stderr: str
    """At most max_output_bytes of its stderr, tracebacks included; bubblewrap's own errors land here too."""
    duration_s: float
    """Wall-clock seconds from spawn to the last byte read."""


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
        isolated = isolation_available()
        if not isolated and not self.allow_unsafe_execution:
            raise SandboxUnavailable(
                f"Generated code cannot be isolated here (it needs root, {SANDBOX_USER!r}, setpriv and a "
                "working bubblewrap at /usr/bin/bwrap); install bubblewrap or set allow_unsafe_execution=True "
                "to run it unsandboxed.")
        if not isolated:
            _warn_unsafe_once()
        for _ in range(self.retries + 1):
            result = self._attempt(program, tests, isolated)
            if result.status != "infra_error":
                break
        return result

    def run_many(self, items: list[tuple[str, str]]) -> list[ExecutionResult]:
        """Run (program, tests) pairs in parallel; results come back in input order."""
        # Threads suffice: each one only waits on its own subprocess.
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda item: self.run(*item), items))

    def _attempt(self, program: str, tests: str, isolated: bool) -> ExecutionResult:
        nonce = secrets.token_hex(16)
        source, checks = program.encode(errors="replace"), tests.encode(errors="replace")
        payload = b"%s %d\n" % (nonce.encode(), len(source)) + source + checks
        status_r, status_w = os.pipe()
        cgroup = _new_cgroup(_MAX_PIDS)
        limits = self._rlimits(isolated)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="selftrain-run-") as home:
            python = [_interpreter()[0], "-I", "-c", _BOOTSTRAP, str(status_w)]
            try:
                proc = subprocess.Popen(
                    _bwrap_command(python) if isolated else python,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(status_w,), cwd=home, env={"PATH": "/usr/bin:/bin", "HOME": home},
                    start_new_session=True, preexec_fn=functools.partial(_confine_child, cgroup, limits))
            except (OSError, subprocess.SubprocessError) as error:
                os.close(status_r)
                _destroy_cgroup(cgroup)
                return ExecutionResult("infra_error", False, None, "", f"could not start the sandbox: {error}",
                                       time.monotonic() - start)
            finally:
                os.close(status_w)
            try:
                out, err, status, timed_out = _communicate(proc, payload, status_r,
                                                           start + self.timeout_s, self.max_output_bytes)
                if not timed_out:
                    try:
                        proc.wait(timeout=max(0.0, start + self.timeout_s - time.monotonic()))
                    except subprocess.TimeoutExpired:  # it closed its pipes and kept running
                        timed_out = True
            finally:
                _kill_group(proc)  # also reaps helpers an unisolated program left behind
                proc.wait()
                os.close(status_r)
                _destroy_cgroup(cgroup)
        lines = status.splitlines()
        started, passed = lines[:1] == [_STARTED], nonce.encode() in lines
        return ExecutionResult(
            status="timeout" if timed_out else "passed" if passed else "failed" if started else "infra_error",
            passed=passed and not timed_out,
            exit_code=None if timed_out else proc.returncode,
            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
            duration_s=time.monotonic() - start)

    def _rlimits(self, isolated: bool) -> list[tuple[int, int]]:
        cpu = math.ceil(self.timeout_s) + 1
        limits = [(resource.RLIMIT_AS, self.memory_mb << 20), (resource.RLIMIT_CPU, cpu),
                  (resource.RLIMIT_FSIZE, _MAX_FILE_BYTES), (resource.RLIMIT_NOFILE, 64),
                  (resource.RLIMIT_CORE, 0)]
        if isolated:
            # NPROC counts every process of the sandbox uid, so it is the budget of all concurrent runs;
            # without isolation the uid is the caller's own and the limit would hit the caller.
            limits.append((resource.RLIMIT_NPROC, _MAX_PIDS * self.workers))
        return limits


def isolation_available() -> bool:
    """True when bubblewrap actually starts a sandbox here as the dedicated user (probed once)."""
    return _probe_isolation()


@functools.cache
def _probe_isolation() -> bool:
    if os.geteuid() != 0 or not shutil.which("bwrap") or not shutil.which("setpriv"):
        return False
    try:
        probe = subprocess.run(
            _bwrap_command([_interpreter()[0], "-I", "-c", "import os; assert os.getuid() != 0"]),
            capture_output=True, timeout=30, env={}, cwd="/")
    except (OSError, subprocess.SubprocessError, KeyError):
        return False
    if probe.returncode != 0:
        log.warning("bubblewrap is installed but a probe sandbox failed: %s", probe.stderr.decode(errors="replace"))
    return probe.returncode == 0


@functools.cache
def _warn_unsafe_once() -> None:
    message = ("selftrain is running generated code WITHOUT a sandbox (allow_unsafe_execution=True): "
               "only rlimits and a timeout stand between it and this machine.")
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


def _bwrap_command(python: list[str]) -> list[str]:
    """bubblewrap runs as root so it can bind an interpreter under /root, then setpriv drops to the
    sandbox user. We unshare namespaces one by one instead of --unshare-all: a user namespace
    would map the sandbox uid back to root on the host."""
    uid, gid = _sandbox_ids()
    return [shutil.which("bwrap"), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
            *_mount_args(),
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(_TMPFS_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            shutil.which("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *python]


@functools.cache
def _mount_args() -> tuple[str, ...]:
    """Read-only views of what the interpreter needs; the project, /root, /home and /etc stay unseen."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += [arg for path in _ETC_FILES if os.path.exists(path) for arg in ("--ro-bind", path, path)]
    executable, prefixes = _interpreter()
    for prefix in sorted({*prefixes, os.path.dirname(executable)}):
        if prefix == "/usr" or prefix.startswith("/usr/") or any(prefix.startswith(p + "/") for p in prefixes):
            continue
        # bwrap copies the host's modes onto the parents it creates; /root is 0700 there, which
        # would hide a pyenv interpreter from the sandbox user.
        parents = [os.path.dirname(prefix)]
        while parents[-1] != "/":
            parents.append(os.path.dirname(parents[-1]))
        for parent in reversed(parents[:-1]):
            args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", prefix, prefix]
    return tuple(args)


@functools.cache
def _interpreter() -> tuple[str, tuple[str, ...]]:
    """The base interpreter and its install prefixes, symlinks resolved: inside a venv we bind the
    interpreter the venv points at, so the project's site-packages are not importable."""
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    return executable, tuple(sorted(prefixes))


@functools.cache
def _sandbox_ids() -> tuple[int, int]:
    """uid/gid of the dedicated user, created on first use: a uid of its own makes RLIMIT_NPROC
    count only sandboxed processes and keeps every file of the host's users out of reach."""
    try:
        entry = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SANDBOX_USER],
                       capture_output=True, check=False)
        entry = pwd.getpwnam(SANDBOX_USER)  # KeyError here: useradd failed, so isolation is unavailable
    return entry.pw_uid, entry.pw_gid


def _confine_child(cgroup: str | None, limits: list[tuple[int, int]]) -> None:
    """Runs in the forked child before exec, so only os and resource calls belong here."""
    if cgroup:
        fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    for which, value in limits:
        # CPU gets a one-second gap so the soft limit's SIGXCPU can fire before the hard SIGKILL.
        resource.setrlimit(which, (value, value + 1) if which == resource.RLIMIT_CPU else (value, value))


def _communicate(proc: subprocess.Popen, payload: bytes, status_fd: int, deadline: float,
                 cap: int) -> tuple[bytes, bytes, bytes, bool]:
    """Feed the payload and drain stdout, stderr and the status pipe until all close or the
    deadline passes. Bytes past the cap are read and dropped, so a flood of output costs the
    program its time budget but never our memory, and it never blocks on a full pipe."""
    stdin = proc.stdin.fileno()
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_fd: bytearray()}
    caps = {fd: _STATUS_BYTES if fd == status_fd else cap for fd in kept}
    pending = memoryview(payload)
    os.set_blocking(stdin, False)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_WRITE)
        for fd in kept:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return *(bytes(b) for b in kept.values()), True
            for key, _ in selector.select(min(remaining, 0.5)):
                if key.fd == stdin:
                    try:
                        pending = pending[os.write(stdin, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # it died before reading its input
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 1 << 16)
                if not data:
                    selector.unregister(key.fd)
                kept[key.fd] += data[:max(0, caps[key.fd] - len(kept[key.fd]))]
            if proc.poll() is not None:
                _kill_group(proc)  # leftovers holding our pipes open would otherwise run to the deadline
    return *(bytes(b) for b in kept.values()), False


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group: bwrap and its pid-namespace init, whose death takes down
    every process in the namespace (double-forked daemons included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@functools.cache
def _cgroup_parent() -> str | None:
    """Where per-run pids cgroups can live: cgroup v2 with the pids controller, else the v1 pids
    hierarchy, else None (RLIMIT_NPROC alone then bounds a fork bomb)."""
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            v2 = "pids" in f.read().split()
    except OSError:
        v2 = False
    try:
        if v2:
            parent = "/sys/fs/cgroup/selftrain-sandbox"
            _write("/sys/fs/cgroup/cgroup.subtree_control", "+pids")
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+pids")
            return parent
        if os.path.exists("/sys/fs/cgroup/pids/cgroup.procs"):
            parent = "/sys/fs/cgroup/pids/selftrain-sandbox"
            os.makedirs(parent, exist_ok=True)
            return parent
    except OSError:
        pass
    return None


def _new_cgroup(max_pids: int) -> str | None:
    parent = _cgroup_parent()
    if parent is None:
        return None
    path = os.path.join(parent, "run-" + secrets.token_hex(8))
    try:
        os.mkdir(path)
        _write(os.path.join(path, "pids.max"), str(max_pids))
        return path
    except OSError:
        _destroy_cgroup(path)
        return None


def _destroy_cgroup(path: str | None) -> None:
    """Kill whatever is left in the run's cgroup and remove it, waiting (briefly) until it is empty
    so the next run does not inherit a dying fork bomb's share of RLIMIT_NPROC."""
    if not path or not os.path.isdir(path):
        return
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")  # cgroup v2: atomic, races no fork
    except OSError:
        pass
    give_up = time.monotonic() + 2.0
    while True:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > give_up:
                log.warning("could not remove sandbox cgroup %s", path)
                return
            time.sleep(0.01)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
