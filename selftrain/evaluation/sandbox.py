"""Run generated Python against its tests inside a bubblewrap sandbox.

Generated code is hostile: it may loop, fork, allocate, flood output, write files, dial out,
read secrets, or exit early so the tests never run. So each run gets fresh namespaces, a
read-only view of the interpreter, a small tmpfs as its only writable place, a dedicated
unprivileged uid, rlimits, a pids cgroup where the machine has one, and a wall clock.

A run passes only when a per-run random nonce reaches a private status pipe after the tests
finished without raising. That defeats early exits and printed fakes; it cannot stop a program
that digs the nonce out of its own interpreter (frames, gc), since tests run in its process.
"""

from __future__ import annotations

import contextlib
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
# -I ignores PYTHON* variables and the user site; -S skips site-packages too, so programs see
# the standard library and nothing else pip put into the interpreter (and start in ~10 ms, not ~50).
_PYTHON_FLAGS = ("-I", "-S")

# Runs inside the sandbox. The nonce and the tests arrive on stdin and then live only in this
# frame, never in a file, argv or the environment. Tools the program could monkeypatch
# (exec, compile, os.write, settrace) are bound as defaults before it runs, and the nonce is
# written only from the `else:` of a try that wraps program and tests, so any exception,
# sys.exit or os._exit before the tests finish leaves it unwritten.
_BOOTSTRAP = r"""
import os, sys
def main(status_fd, write=os.write, run=exec, build=compile, trace=sys.settrace, profile=sys.setprofile):
    header, _, body = sys.stdin.buffer.read().partition(b"\n")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    nonce, split = header.split()
    sources = (("solution.py", body[:int(split)].decode()), ("tests.py", body[int(split):].decode()))
    del header, body
    write(status_fd, b"%s\n")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for name, text in sources:
            trace(None), profile(None)  # a tracer could otherwise jump over the asserts
            run(build(text, name, "exec", dont_inherit=True, optimize=0), namespace)
    except SystemExit:
        raise
    except BaseException as error:
        import linecache, traceback  # only now: together they cost more startup time than Python itself
        for name, text in sources:
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        raise SystemExit(1)
    else:
        write(status_fd, nonce + b"\n")
main(int(sys.argv[1]))
""" % _STARTED.decode()


@dataclass(frozen=True)
class ExecutionResult:
    status: str             # "passed" | "failed" | "timeout" | "infra_error" (the sandbox itself broke)
    passed: bool            # True only when the tests ran to the end without raising
    exit_code: int | None   # None when killed at the deadline
    stdout: str             # at most max_output_bytes of it
    stderr: str             # likewise; tracebacks, and bubblewrap's own errors, land here
    duration_s: float       # wall clock from spawn to exit (or to the deadline)


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
                f"Cannot isolate generated code here: the sandbox needs root (to switch to the {SANDBOX_USER!r} "
                "user), setpriv and a working bubblewrap (bwrap); install them or pass "
                "allow_unsafe_execution=True to run it unsandboxed.")
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
        source = program.encode(errors="replace")
        payload = b"%s %d\n" % (nonce.encode(), len(source)) + source + tests.encode(errors="replace")
        python = [_interpreter()[0], *_PYTHON_FLAGS, "-c", _BOOTSTRAP]
        start = time.monotonic()
        # Unisolated runs need a scratch directory of their own; bwrap brings its tmpfs.
        with contextlib.nullcontext("/") if isolated else tempfile.TemporaryDirectory(prefix="selftrain-") as home:
            status_r, status_w = os.pipe()
            cgroup = _new_cgroup(_MAX_PIDS)
            try:
                try:
                    proc = subprocess.Popen(
                        _bwrap_command([*python, str(status_w)]) if isolated else [*python, str(status_w)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        pass_fds=(status_w,), cwd=home, env={"PATH": "/usr/bin:/bin", "HOME": home},
                        start_new_session=True, preexec_fn=functools.partial(_confine_child, cgroup,
                                                                             self._rlimits(isolated)))
                finally:
                    os.close(status_w)
                try:
                    out, err, status, timed_out = _communicate(proc, payload, status_r,
                                                               start + self.timeout_s, self.max_output_bytes)
                    duration = time.monotonic() - start
                finally:
                    _kill_group(proc)  # not reaped yet, so the group is still this run's
                    proc.wait()
            except (OSError, subprocess.SubprocessError) as error:
                return ExecutionResult("infra_error", False, None, "", f"The sandbox failed to run: {error}",
                                       time.monotonic() - start)
            finally:
                os.close(status_r)
                _destroy_cgroup(cgroup)
        lines = status.splitlines()
        started, passed = lines[:1] == [_STARTED], nonce.encode() in lines
        return ExecutionResult(
            status="timeout" if timed_out else "passed" if passed else "failed" if started else "infra_error",
            passed=passed and not timed_out, exit_code=None if timed_out else proc.returncode,
            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"), duration_s=duration)

    def _rlimits(self, isolated: bool) -> list[tuple[int, int]]:
        limits = [(resource.RLIMIT_AS, self.memory_mb << 20), (resource.RLIMIT_CPU, math.ceil(self.timeout_s) + 1),
                  (resource.RLIMIT_FSIZE, _MAX_FILE_BYTES), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)]
        if isolated:
            # NPROC counts every process of the sandbox uid, so it is the budget of all concurrent runs;
            # without isolation the uid is the caller's own and the limit would hit the caller.
            limits.append((resource.RLIMIT_NPROC, _MAX_PIDS * self.workers))
        return limits


@functools.cache
def isolation_available() -> bool:
    """True when bubblewrap actually starts a sandbox here as the dedicated user (probed once)."""
    if os.geteuid() != 0 or not shutil.which("bwrap") or not shutil.which("setpriv"):
        return False
    try:
        probe = subprocess.run(
            _bwrap_command([_interpreter()[0], *_PYTHON_FLAGS, "-c", "import os; assert os.getuid() != 0"]),
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
        if os.path.islink(top) or os.path.isdir(top):
            args += ["--symlink", os.readlink(top), top] if os.path.islink(top) else ["--ro-bind", top, top]
    binds = [path for path in _ETC_FILES if os.path.exists(path)] + _interpreter()[1]
    # bwrap creates the parents of a bind 0700 (or with the host's mode, 0700 for /root), which
    # would hide the interpreter and ld.so.cache from the sandbox user.
    parents = {parent for path in binds for parent in _ancestors(path)}
    args += [arg for parent in sorted(parents, key=len) for arg in ("--perms", "0755", "--dir", parent)]
    args += [arg for path in binds for arg in ("--ro-bind", path, path)]
    return tuple(args)


def _ancestors(path: str) -> list[str]:
    """'/a/b/c' -> ['/a/b', '/a']"""
    parents = []
    while (path := os.path.dirname(path)) != "/":
        parents.append(path)
    return parents


@functools.cache
def _interpreter() -> tuple[str, list[str]]:
    """The base interpreter and the trees outside /usr it lives in, symlinks resolved: inside a
    venv we bind the interpreter the venv points at, so the project's packages stay invisible."""
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(executable))}
    return executable, sorted(r for r in roots if not any(_inside(r, t) for t in (roots - {r}) | {"/usr"}))


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


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


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group: bwrap and its pid-namespace init, whose death takes down
    every process in the namespace (double-forked daemons included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@functools.cache
def _cgroup_parent() -> str | None:
    """Where per-run pids cgroups can live: the v1 pids hierarchy or cgroup v2 with the pids
    controller; None elsewhere, and RLIMIT_NPROC alone then bounds a fork bomb."""
    try:
        if os.path.exists("/sys/fs/cgroup/pids/cgroup.procs"):
            os.makedirs(parent := "/sys/fs/cgroup/pids/selftrain-sandbox", exist_ok=True)
            return parent
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            if "pids" not in f.read().split():
                return None
        _write("/sys/fs/cgroup/cgroup.subtree_control", "+pids")
        os.makedirs(parent := "/sys/fs/cgroup/selftrain-sandbox", exist_ok=True)
        _write(os.path.join(parent, "cgroup.subtree_control"), "+pids")
        return parent
    except OSError:  # read-only cgroupfs, a container's nested v2 tree, ...
        return None


def _new_cgroup(max_pids: int) -> str | None:
    if (parent := _cgroup_parent()) is None:
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
    give_up = time.monotonic() + 2.0
    while path and os.path.isdir(path):
        try:
            if os.path.exists(kill := os.path.join(path, "cgroup.kill")):
                _write(kill, "1")  # cgroup v2 kills atomically, racing no fork
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            os.rmdir(path)
        except OSError:
            if time.monotonic() > give_up:
                log.warning("could not remove sandbox cgroup %s", path)
                return
            time.sleep(0.002)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
