"""Per-run pids cgroups for the sandbox: a fork bomb in one run cannot take the process
budget of the runs beside it, and whatever a run leaves behind is killed as one group.

A run's processes are put in its cgroup by the parent (`spawn_in`), never by a `preexec_fn`
in the child: a Python-level preexec_fn forces subprocess to fork() rather than vfork(), which
in a parent holding torch copies its page tables on every run (measured: 22 ms instead of
2.5 ms to spawn /bin/true). On cgroup v1 the spawning thread steps into the cgroup for the
spawn, so the child is born there; written as "0" (this thread), the move skips the kernel's
global threadgroup lock and takes ~0.05 ms. cgroup v2 moves only whole processes, so there
the new process tree is moved after the spawn (`adopt`); each such write waits for that lock
(an RCU grace period: ~10 ms a run when measured through v1's cgroup.procs; the v2 path is
not exercised on the machine this was written on). Where neither exists `new_cgroup`
returns None and the sandbox relies on RLIMIT_NPROC alone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def cgroup_parent() -> str | None:
    """Where per-run pids cgroups can live: the v1 pids hierarchy or cgroup v2 with the pids
    controller; None elsewhere (read-only cgroupfs, a container's nested v2 tree, ...)."""
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
    except OSError:
        return None


def new_cgroup(max_pids: int) -> str | None:
    """A fresh cgroup allowing `max_pids` processes and threads, or None where there is none."""
    if (parent := cgroup_parent()) is None:
        return None
    path = os.path.join(parent, "run-" + secrets.token_hex(8))
    try:
        os.mkdir(path)
        _write(os.path.join(path, "pids.max"), str(max_pids))
        return path
    except OSError:
        destroy_cgroup(path)
        return None


def spawn_in(cgroup: str | None, spawn: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Start a process with `spawn()` so that it and all its descendants live in `cgroup`."""
    if cgroup is None:
        return spawn()
    tasks = os.path.join(cgroup, "tasks")
    if not os.path.exists(tasks):  # cgroup v2
        proc = spawn()
        try:
            adopt(cgroup, proc.pid)
        except OSError:
            proc.kill()
            proc.wait()
            raise
        return proc
    home = _own_v1_cgroup()
    # "0" names the writing thread. The kernel then skips the global threadgroup lock, whose
    # write side waits for an RCU grace period: writing our own tid instead cost ~10 ms a move.
    _write(tasks, "0")
    try:
        return spawn()
    finally:
        _write(os.path.join(home, "tasks"), "0")


def _own_v1_cgroup() -> str:
    """The calling thread's current cgroup in the v1 pids hierarchy."""
    with open("/proc/thread-self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "pids" in controllers.split(","):
                return "/sys/fs/cgroup/pids" + path
    raise OSError("this thread is in no pids cgroup")


def adopt(cgroup: str, pid: int) -> None:
    """Move `pid` and all its descendants into `cgroup`.

    Race-free for a tree that forks while we walk it, because each process is moved
    before its children are listed: a child forked before its parent moved shows up in
    the list read afterwards, and one forked after inherits the cgroup. The sandbox calls
    this while its process tree is still bubblewrap and the bootstrap blocked on stdin, so
    nothing untrusted has run yet; a process that exits meanwhile is simply skipped.
    """
    procs = os.path.join(cgroup, "cgroup.procs")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            _write(procs, str(current))
            tasks = os.listdir(f"/proc/{current}/task")
        except (ProcessLookupError, FileNotFoundError):
            continue
        for tid in tasks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    pending.extend(int(child) for child in f.read().split())


def destroy_cgroup(path: str | None) -> None:
    """Kill whatever is left in the run's cgroup and remove it, waiting (briefly) until no live
    process is left in it. (A process that has exited but is not yet reaped leaves the list
    earlier; the sandbox reaps its own, see sandbox._end_run. bwrap's root-owned pid-namespace
    init can stay a zombie until the host's init reaps it: harmless, and not the sandbox uid's.)"""
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
