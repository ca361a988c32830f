"""The jail the sandbox runs programs in: bubblewrap's command line, what is mounted into it,
which interpreter runs there, and the unprivileged user it runs as.

`sandbox.py` decides how a run goes and what its outcome is; this module only knows how
to build (and probe) an isolated process.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shutil
import subprocess
import sys

log = logging.getLogger(__name__)

SANDBOX_USER = "selftrain-sandbox"
_TMPFS_BYTES = 64 << 20        # the whole writable tmpfs; it is RAM, so it is capped
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
# -I ignores PYTHON* variables and the user site; -S skips site-packages too, so programs see
# the standard library and nothing else pip put into the interpreter (and start in ~10 ms, not ~50).
PYTHON_FLAGS = ("-I", "-S")


@functools.cache
def isolation_available() -> bool:
    """True when bubblewrap actually starts a sandbox here as the dedicated user (probed once)."""
    if os.geteuid() != 0 or not shutil.which("bwrap") or not shutil.which("setpriv"):
        return False
    try:
        probe = subprocess.run(
            bwrap_command([interpreter()[0], *PYTHON_FLAGS, "-c", "import os; assert os.getuid() != 0"]),
            capture_output=True, timeout=30, env={}, cwd="/")
    except (OSError, subprocess.SubprocessError, KeyError):
        return False
    if probe.returncode != 0:
        log.warning("bubblewrap is installed but a probe sandbox failed: %s", probe.stderr.decode(errors="replace"))
    return probe.returncode == 0


def bwrap_command(python: list[str]) -> list[str]:
    """bubblewrap runs as root so it can bind an interpreter under /root, then setpriv drops to the
    sandbox user. We unshare namespaces one by one instead of --unshare-all: a user namespace
    would map the sandbox uid back to root on the host."""
    uid, gid = _sandbox_ids()
    return [_tool("bwrap"), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
            *_mount_args(),
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(_TMPFS_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            _tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *python]


@functools.cache
def _tool(name: str) -> str | None:
    return shutil.which(name)


@functools.cache
def _mount_args() -> tuple[str, ...]:
    """Read-only views of what the interpreter needs; the project, /root, /home and /etc stay unseen."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top) or os.path.isdir(top):
            args += ["--symlink", os.readlink(top), top] if os.path.islink(top) else ["--ro-bind", top, top]
    binds = [path for path in _ETC_FILES if os.path.exists(path)] + interpreter()[1]
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
def interpreter() -> tuple[str, list[str]]:
    """The interpreter programs run with, and the trees outside /usr it needs bound in.

    The system's python3.<our minor> when there is one: the same language version, already
    inside the /usr bind, and built by distributions static and PGO-optimised, so it starts
    ~2 ms of CPU sooner than a --enable-shared build such as pyenv's (8 vs 10.5 ms measured).
    Otherwise our own base interpreter, symlinks resolved: inside a venv we bind the interpreter
    the venv points at, so the project's packages stay invisible."""
    system = f"/usr/bin/python3.{sys.version_info.minor}"
    if os.access(system, os.X_OK) and _inside(os.path.realpath(system), "/usr"):
        return os.path.realpath(system), []
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
