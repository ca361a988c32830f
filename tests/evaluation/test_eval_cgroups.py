"""Tests for selftrain.evaluation.cgroups on this machine's real cgroup tree (root only)."""

import os
import subprocess
import time

import pytest

from selftrain.evaluation.cgroups import adopt, cgroup_parent, destroy_cgroup, new_cgroup, spawn_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or cgroup_parent() is None,
                                reason="needs root and a pids cgroup hierarchy")


def members(cgroup: str) -> set[int]:
    with open(os.path.join(cgroup, "cgroup.procs")) as f:
        return {int(pid) for pid in f.read().split()}


def tree(pid: int) -> set[int]:
    found, pending = set(), [pid]
    while pending:
        current = pending.pop()
        found.add(current)
        with open(f"/proc/{current}/task/{current}/children") as f:
            pending += [int(child) for child in f.read().split()]
    return found


@pytest.fixture
def cgroup():
    path = new_cgroup(16)
    yield path
    destroy_cgroup(path)
    assert not os.path.exists(path)


def test_adopt_moves_a_whole_process_tree(cgroup):
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        time.sleep(0.2)  # let sh start its two children
        adopt(cgroup, proc.pid)
        assert len(tree(proc.pid)) == 3 and tree(proc.pid) <= members(cgroup)
    finally:
        proc.kill()
        proc.wait()


def test_spawn_in_starts_the_process_inside(cgroup):
    proc = spawn_in(cgroup, lambda: subprocess.Popen(["sleep", "30"]))
    try:
        assert members(cgroup) == {proc.pid}
        with open("/proc/thread-self/cgroup") as f:  # and the spawning thread went home again
            assert not any(os.path.basename(cgroup) in line for line in f)
    finally:
        proc.kill()
        proc.wait()


def test_pids_max_stops_a_fork_loop_and_destroy_kills_leftovers(cgroup):
    proc = spawn_in(cgroup, lambda: subprocess.Popen(
        ["sh", "-c", "for i in $(seq 40); do sleep 30 & done; wait"], stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    assert len(members(cgroup)) <= 16  # pids.max held the loop to 16 processes
    destroy_cgroup(cgroup)
    proc.wait(timeout=5)
    assert not os.path.exists(cgroup)
