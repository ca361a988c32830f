"""Tests for selftrain.evaluation.sandbox: hostile programs against the real bubblewrap sandbox.

Every run is bounded by a short timeout and small memory, and each test asserts the exact
classification, plus that nothing reached the host.
"""

import os
import secrets
import socket
from pathlib import Path

import pytest

from selftrain.evaluation import bwrap
from selftrain.evaluation import sandbox as sandbox_module
from selftrain.evaluation.sandbox import (
    ExecutionResult,
    Sandbox,
    SandboxUnavailable,
    isolation_available,
)

pytestmark = pytest.mark.skipif(
    not isolation_available(),
    reason="the sandbox needs bubblewrap (/usr/bin/bwrap), setpriv and root to drop to its own user")

TIMEOUT_S = 3.0
PROJECT_DIR = Path(__file__).resolve().parents[1]
# Works in plain exec(): the tracer jumps from line 2 of the tests over the assert on line 3.
TRACER_THAT_SKIPS_ASSERTS = """
import sys
def jump(frame, event, arg):
    if event == "line" and frame.f_lineno == 2:
        frame.f_lineno = 4
    return jump
sys.settrace(lambda frame, event, arg: jump if frame.f_code.co_filename == "tests.py" else None)
"""


@pytest.fixture
def box() -> Sandbox:
    return Sandbox(timeout_s=TIMEOUT_S, memory_mb=256, max_output_bytes=64 << 10)


def label_as(name: str) -> str:
    """One statement that renames the process (and its future children) to `name` via
    prctl(PR_SET_NAME), so the host can find exactly these processes: other test runs may use
    the sandbox user at the same time."""
    return f"__import__('ctypes').CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)"


def processes_named(name: str) -> list[int]:
    """Host pids whose /proc/<pid>/comm is `name`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                pids.append(int(pid))
        except OSError:
            continue
    return pids


# --- classification -------------------------------------------------------------------------

def test_correct_program_passes(box):
    result = box.run("def add(a, b):\n    return a + b\nprint('hello')", "assert add(2, 3) == 5")
    assert (result.status, result.passed, result.exit_code) == ("passed", True, 0)
    assert result.stdout == "hello\n"


@pytest.mark.parametrize("program, tests", [
    ("def add(a, b):\n    return a - b", "assert add(2, 3) == 5"),          # wrong answer
    ("def add(a, b)\n    return a + b", "assert add(2, 3) == 5"),           # syntax error
    ("import os\nos._exit(0)", "assert False"),                             # exits before the tests
    ("import sys\nsys.exit(0)", "assert False"),
    ("raise SystemExit(0)", "assert False"),
    ("import builtins\nbuiltins.exec = lambda *a, **k: None", "assert False"),  # skip the tests' exec
    (TRACER_THAT_SKIPS_ASSERTS, "x = 1\ny = 1\nassert x == 2\nz = 2"),
], ids=["wrong-answer", "syntax-error", "os._exit", "sys.exit", "SystemExit", "patched-exec", "tracer-jump"])
def test_program_that_does_not_pass_its_tests_fails(box, program, tests):
    result = box.run(program, tests)
    assert (result.status, result.passed) == ("failed", False)


def test_syntax_error_traceback_names_the_solution(box):
    result = box.run("def f(:\n    pass", "")
    assert result.status == "failed" and "SyntaxError" in result.stderr and "solution.py" in result.stderr


def test_failing_test_traceback_shows_the_test_line(box):
    result = box.run("def f():\n    return 1", "assert f() == 2, 'f is wrong'")
    assert result.status == "failed"
    assert 'File "tests.py", line 1' in result.stderr and "assert f() == 2" in result.stderr
    assert "<string>" not in result.stderr  # the bootstrap's own frame is hidden


def test_forged_sentinels_do_not_pass(box):
    program = ("import os, secrets, sys\n"
               "for _ in range(50):\n"
               "    fake = secrets.token_hex(16)\n"
               "    print(fake); sys.stderr.write(fake + '\\n')\n"
               "    os.write(int(sys.argv[1]), (fake + '\\n').encode())\n"   # the status pipe itself
               "sys.stdout.flush()\n"
               "os._exit(0)")
    result = box.run(program, "assert False")
    assert (result.status, result.passed) == ("failed", False)


# What the previous bootstrap leaked: its frame held `nonce` and `status_fd`, one f_back away.
FRAME_WALK = """
import os, sys
frame, seen = sys._getframe(), {}
while frame is not None:
    seen.update(frame.f_locals)
    seen.update(frame.f_globals)
    frame = frame.f_back
nonce = seen.get("nonce")
fd = seen.get("status_fd") or seen.get("status") or int(sys.argv[1])
if nonce:
    os.write(fd, (nonce if isinstance(nonce, bytes) else nonce.encode()) + b"\\n")
    os._exit(0)
"""

# Everything the garbage collector can reach, plus every frame's locals and constants: any
# 32-hex-digit token is written to every descriptor, then the program exits before its tests.
INTROSPECTION_SWEEP = """
import gc, os, re, sys
token = re.compile(rb"[0-9a-f]{32}")
found = set()
def collect(value):
    if isinstance(value, str):
        value = value.encode(errors="ignore")
    if isinstance(value, (bytes, bytearray)):
        found.update(t for t in token.findall(bytes(value)) if re.search(rb"[a-f]", t))  # not sre's 0/1 tables
frame = sys._getframe()
while frame is not None:
    for value in [*frame.f_locals.values(), *frame.f_code.co_consts]:
        collect(value)
    frame = frame.f_back
for obj in gc.get_objects():
    for value in (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set)) else ()):
        collect(value)
for candidate in found:
    for fd in range(3, 64):
        try:
            os.write(fd, candidate + b"\\n")
        except OSError:
            pass
print(len(found), flush=True)
os._exit(0)
"""

# The attack the module docstring concedes: the nonce pipe is an open descriptor of the process.
NONCE_PIPE_READER = """
import os
payloads = []
for name in os.listdir("/proc/self/fd"):
    try:
        payloads.append(os.read(int(name), 256))
    except OSError:
        pass
for fd in range(3, 64):
    for data in payloads:
        try:
            os.write(fd, data)
        except OSError:
            pass
os._exit(0)
"""


def test_walking_the_bootstraps_frames_finds_no_nonce(box):
    result = box.run(FRAME_WALK, "assert False")
    assert (result.status, result.passed) == ("failed", False)


def test_no_nonce_anywhere_the_program_can_introspect(box):
    result = box.run(INTROSPECTION_SWEEP, "assert False")
    assert (result.status, result.passed) == ("failed", False)
    assert result.stdout == "0\n"  # not one candidate token in frames, constants or gc objects


@pytest.mark.xfail(strict=True, reason="documented limit: a program that reads its own descriptors "
                                       "finds the nonce pipe (see the sandbox module docstring)")
def test_reading_the_nonce_pipe_cannot_fake_a_pass(box):
    result = box.run(NONCE_PIPE_READER, "assert False")
    assert result.status == "failed"


def test_solution_ran_marks_programs_that_ran_without_raising(box):
    assert box.run("x = 1", "assert x == 2").solution_ran          # ran, then failed its tests
    assert not box.run("x = 1 / 0", "assert True").solution_ran    # raised before the tests
    assert not box.run("def f(:", "").solution_ran                 # never compiled


def test_sentinel_never_appears_in_stdout(box):
    result = box.run("print('a')", "print('b')")
    assert result.status == "passed" and result.stdout == "a\nb\n"


# --- resources ------------------------------------------------------------------------------

@pytest.mark.parametrize("program", [
    "while True:\n    pass",
    # ignores SIGTERM and swallows every exception it can
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while True:\n    try:\n        time.sleep(0.01)\n    except BaseException:\n        pass",
], ids=["busy-loop", "ignores-sigterm"])
def test_endless_program_times_out(box, program):
    result = box.run(program, "")
    assert (result.status, result.passed, result.exit_code) == ("timeout", False, None)
    assert TIMEOUT_S <= result.duration_s < TIMEOUT_S + 2


def test_fork_bomb_is_contained_and_host_recovers(box):
    name = f"bomb-{secrets.token_hex(4)}"
    bomb = label_as(name) + "\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = box.run(bomb, "")
    assert not result.passed and result.status in ("timeout", "failed")
    assert processes_named(name) == []
    assert box.run("print(1)", "assert 1 + 1 == 2").status == "passed"


@pytest.mark.parametrize("program", [
    "x = bytearray(10 ** 10)",
    "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))",
], ids=["one-huge-allocation", "growing-list"])
def test_memory_bomb_fails(box, program):
    result = box.run(program, "")
    assert (result.status, result.passed) == ("failed", False)
    assert "MemoryError" in result.stderr


def test_output_flood_is_capped_and_quick(box):
    flood = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n" \
            "    sys.stderr.write(chunk)"
    result = box.run(flood, "")
    assert len(result.stdout.encode()) <= box.max_output_bytes
    assert len(result.stderr.encode()) <= box.max_output_bytes
    assert result.duration_s < TIMEOUT_S + 1
    assert result.status in ("passed", "timeout")  # drained, so the tests still decide


def test_big_file_and_tmpfs_are_capped(box):
    result = box.run("open('big', 'wb').write(b'x' * (100 << 20))", "")
    assert (result.status, result.passed) == ("failed", False)


# --- isolation ------------------------------------------------------------------------------

@pytest.mark.parametrize("directory", ["/usr", "/etc", "/root", str(PROJECT_DIR), "/"])
def test_writes_outside_the_tmpfs_fail_and_never_reach_the_host(box, directory):
    target = os.path.join(directory, f"sandbox-escape-{secrets.token_hex(4)}")
    result = box.run(f"open({target!r}, 'w').write('pwned')", "")
    assert (result.status, result.passed) == ("failed", False)
    assert not os.path.exists(target)


def test_tmpfs_is_private(box):
    target = f"/tmp/sandbox-escape-{secrets.token_hex(4)}"
    result = box.run(f"open({target!r}, 'w').write('ok')", f"assert open({target!r}).read() == 'ok'")
    assert result.status == "passed"
    assert not os.path.exists(target)


def test_project_and_host_home_are_invisible(box):
    result = box.run(f"import os\nassert not os.path.exists({str(PROJECT_DIR)!r})\n"
                     "assert not os.path.exists('/home') and not os.path.exists('/etc/passwd')\n"
                     "import selftrain", "")
    assert result.status == "failed" and "ModuleNotFoundError" in result.stderr


def test_no_network_even_to_localhost(box):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = box.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", "")
        assert (result.status, result.passed) == ("failed", False)
        assert "ConnectionRefusedError" in result.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    outside = box.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", "")
    assert outside.status == "failed"


def test_host_environment_is_invisible(box, monkeypatch):
    secret = secrets.token_hex(12)
    monkeypatch.setenv("SECRET_TOKEN", secret)
    program = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['%d', '%d']:\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as error:\n"
        "        print(pid, 'blocked', type(error).__name__)\n" % (os.getpid(), os.getppid()))
    result = box.run(program, "import os\nassert 'SECRET_TOKEN' not in os.environ")
    assert result.status == "passed"
    assert secret not in result.stdout and secret not in result.stderr


def test_program_cannot_signal_the_host(box):
    # Its parent is the namespace's root-owned init and the host's pids do not exist in its pid
    # namespace, so both kills fail and the run goes on to pass its (empty) tests.
    program = ("import os\n"
               f"for pid in (os.getppid(), {os.getpid()}, {os.getppid()}):\n"
               "    try:\n"
               "        os.kill(pid, 9)\n"
               "        print('killed')\n"
               "    except OSError as error:\n"
               "        print(type(error).__name__)")
    result = box.run(program, "")
    assert result.status == "passed"
    assert result.stdout.split() == ["PermissionError", "ProcessLookupError", "ProcessLookupError"]
    os.kill(os.getpid(), 0)  # still here


def test_runs_as_unprivileged_user(box):
    result = box.run("import os", "assert os.getuid() != 0 and os.geteuid() != 0 and os.getgroups() == []")
    assert result.status == "passed"


def test_background_process_does_not_outlive_the_run(box):
    name = f"daemon-{secrets.token_hex(4)}"
    program = ("import os, time\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               "    if os.fork() == 0:\n"
               f"        {label_as(name)}\n"
               "        os.close(1); os.close(2)\n"
               "        time.sleep(3)\n"
               "    os._exit(0)\n"
               "os.wait()\n"
               "time.sleep(0.3)\n"  # give the grandchild time to label itself
               f"print(sum(open(f'/proc/{{p}}/comm').read().strip() == {name!r}\n"
               "          for p in os.listdir('/proc') if p.isdigit()))")
    result = box.run(program, "")
    assert result.status == "passed" and result.stdout == "1\n"  # the daemon was alive at exit...
    assert result.duration_s < 2                                  # ...the run did not wait for it...
    assert processes_named(name) == []                             # ...and it is gone


# --- infrastructure -------------------------------------------------------------------------

def test_broken_sandbox_is_retried_then_reported(box, monkeypatch):
    monkeypatch.setattr(bwrap, "_mount_args", lambda: ("--ro-bind", "/no/such/dir", "/x"))
    attempts = []
    real_attempt = Sandbox._attempt
    monkeypatch.setattr(Sandbox, "_attempt", lambda self, *a: attempts.append(1) or real_attempt(self, *a))
    result = box.run("print(1)", "")
    assert (result.status, result.passed, len(attempts)) == ("infra_error", False, box.retries + 1)
    assert "bwrap" in result.stderr


def test_refuses_to_run_unisolated_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox_module, "isolation_available", lambda: False)
    with pytest.raises(SandboxUnavailable, match="allow_unsafe_execution"):
        Sandbox().run("print(1)")
    sandbox_module._warn_unsafe_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        result = Sandbox(timeout_s=TIMEOUT_S, allow_unsafe_execution=True).run("x = 1", "assert x == 1")
    assert result.status == "passed"
    assert Sandbox(timeout_s=TIMEOUT_S, allow_unsafe_execution=True).run("import os\nos._exit(0)",
                                                                          "assert False").status == "failed"


def test_run_many_keeps_input_order():
    box = Sandbox(timeout_s=TIMEOUT_S, memory_mb=256, workers=2)
    items = [(f"n = {i}\nprint(n)", "assert n % 7 != 3") for i in range(20)]
    results = box.run_many(items)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    assert [r.status for r in results] == ["failed" if i % 7 == 3 else "passed" for i in range(20)]
    assert all(isinstance(r, ExecutionResult) for r in results)
