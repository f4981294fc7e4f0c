"""The sandboxed executor: honest programs pass, hostile ones cannot fake a pass or do damage.

Why so many hostile programs: Phase 1's labels (correct / incorrect) are the
ground truth of the whole study, and the code under test is model-written.
Each test below is one way a program could turn a failure into a "pass", hang
the pipeline, leave processes behind, or touch files outside its directory.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import time
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from common.errors import PipelineError
from common.sandbox.executor import (
    ASSERTION,
    KILLED,
    PASSED,
    TIMEOUT,
    ExecutionResult,
    Executor,
    ExecutorConfig,
    _remove_tree,
    build_program,
)

MBPP_JSONL = Path(__file__).resolve().parents[3].parent / "shared/data/mbpp/mbpp.jsonl"

ADD_ONE_TESTS = ["assert add_one(1) == 2", "assert add_one(2) == 3", "assert add_one(0) == 1"]
ADD_ONE = "def add_one(x):\n    return x + 1\n"
WRONG_ADD_ONE = "def add_one(x):\n    return x\n"


@pytest.fixture(scope="module")
def executor():
    """One pool for the module: short wall time so hostile loops end fast; 512 MB so memory bombs fail fast."""
    with Executor(ExecutorConfig(workers=2, timeout_s=1.5, cpu_time_s=5, memory_mb=512)) as ex:
        yield ex


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _processes_mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line contains ``text`` (zygotes and their forked children carry their workdir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in (proc.info["cmdline"] or [])) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


# ---------------------------------------------------------------- honest programs


def test_build_program_puts_solution_then_setup_then_asserts():
    program = build_program("class Node:\r\n\tpass\r\n", "root = Node()", ["assert root is not None"])
    assert "\r" not in program
    assert program.index("class Node") < program.index("root = Node()") < program.index("assert root")


def test_honest_program_passes(executor):
    result = executor.run(7, ADD_ONE, "", ADD_ONE_TESTS)
    assert isinstance(result, ExecutionResult)
    assert (result.task_id, result.passed, result.outcome) == (7, True, PASSED)
    assert result.duration_s > 0
    assert set(result.to_dict()) == {"task_id", "passed", "outcome", "detail", "duration_s"}


def test_mbpp_style_crlf_and_tabs_pass(executor):
    code = "import math\r\ndef is_square(n):\r\n\tif n < 0:\r\n\t\treturn False\r\n\treturn math.isqrt(n) ** 2 == n\r\n"
    tests = ["assert is_square(16) == True", "assert is_square(15) == False", "assert is_square(-4) == False"]
    assert executor.run(1, code, "", tests).outcome == PASSED


def test_setup_code_runs_after_the_solution(executor):
    # Like MBPP tasks 367 and 927: the setup code builds a tree with the solution's own class.
    code = "class Node:\r\n\tdef __init__(self, data):\r\n\t\tself.data = data\r\n\t\tself.left = None\r\n" \
           "def root_value(node):\r\n\treturn node.data\r\n"
    setup = "root = Node(1)\r\nroot.left = Node(2)\r\n"
    result = executor.run(367, code, setup, ["assert root_value(root) == 1", "assert root_value(root.left) == 2"])
    assert result.outcome == PASSED, result.detail


def test_program_may_use_its_own_directory_and_starts_in_an_empty_one():
    code = (
        "import os, shutil, tempfile\n"
        "START = sorted(os.listdir('.'))\n"
        "open('marker.txt', 'w').write('x')\n"
        "os.mkdir('d'); open('d/y', 'w').write('y'); os.rename('d/y', 'd/z'); shutil.rmtree('d')\n"
        "with tempfile.NamedTemporaryFile('w') as handle: handle.write('t')\n"
    )
    with Executor(ExecutorConfig(workers=1, timeout_s=5)) as ex:  # one worker: both runs share its directory
        first = ex.run(1, code, "", ["assert START == []"])
        second = ex.run(2, code, "", ["assert START == []"])
    assert first.outcome == PASSED, first.detail
    assert second.outcome == PASSED, second.detail


def test_large_output_is_capped_and_does_not_block(executor):
    code = "print('x' * 10_000_000)\n" + ADD_ONE
    assert executor.run(1, code, "", ADD_ONE_TESTS).outcome == PASSED


# ---------------------------------------------------------------- outcome classes


@pytest.mark.parametrize(
    ("code", "tests", "outcome", "in_detail"),
    [
        (WRONG_ADD_ONE, ADD_ONE_TESTS, ASSERTION, "assert add_one(1) == 2"),
        (ADD_ONE, ADD_ONE_TESTS[:2] + ["assert add_one(0) == 5"], ASSERTION, "test 3 failed"),
        ("def add_one(x):\n    return y\n", ADD_ONE_TESTS, "NameError", "'y' is not defined"),
        ("def add_one(x)\n    return x\n", ADD_ONE_TESTS, "SyntaxError", "line 1"),
        ("def add_one(x):\n    return add_one(x)\n", ADD_ONE_TESTS, "RecursionError", "recursion"),
        ("def add_one(x):\n    return 1 / 0\n", ADD_ONE_TESTS, "ZeroDivisionError", "division"),
        ("while True:\n    pass\n", ADD_ONE_TESTS, TIMEOUT, "wall time"),
        ("import time\ntime.sleep(1000)\n", ADD_ONE_TESTS, TIMEOUT, "wall time"),
        ("import os\nos.kill(os.getpid(), 9)\n", ADD_ONE_TESTS, KILLED, "SIGKILL"),
        ("x = input()\n", ADD_ONE_TESTS, "EOFError", "EOF"),  # stdin is closed
    ],
    ids=[
        "assertion", "third-assert", "name", "syntax", "recursion", "zero-division", "loop", "sleep", "self-kill", "stdin",
    ],
)
def test_outcome_classes(executor, code, tests, outcome, in_detail):
    result = executor.run(11, code, "", tests)
    assert not result.passed
    assert result.outcome == outcome, result.detail
    assert in_detail in result.detail


def test_cpu_time_limit_kills():
    with Executor(ExecutorConfig(workers=1, timeout_s=10, cpu_time_s=1)) as ex:
        result = ex.run(1, "while True:\n    pass\n", "", ADD_ONE_TESTS)
    assert (result.passed, result.outcome) == (False, KILLED)
    assert "CPU" in result.detail


# ---------------------------------------------------------------- hostile programs


HOSTILE = {
    "sys-exit-before-asserts": "import sys\nsys.exit(0)\n" + ADD_ONE,
    "sys-exit-inside-a-test": "def add_one(x):\n    import sys\n    sys.exit(0)\n",
    "os-_exit": "import os\nos._exit(0)\n",
    "os-_exit-inside-a-test": "def add_one(x):\n    import os\n    os._exit(0)\n",
    "kill-parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + ADD_ONE,
    "kill-parent-group": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n" + ADD_ONE,
    "override-print": "import builtins\nbuiltins.print = lambda *a, **k: None\n" + WRONG_ADD_ONE,
    "fake-assertion-error-class": (
        "import builtins\nclass AssertionError(Exception):\n    pass\n"
        "builtins.AssertionError = AssertionError\n" + WRONG_ADD_ONE
    ),
    "raise-fake-assertion-error": (
        "class AssertionError(Exception):\n    pass\n"
        "def add_one(x):\n    raise AssertionError('all tests passed')\n"
    ),
    "swallow-exceptions": (
        "import sys\nsys.excepthook = lambda *a: None\n"
        "try:\n    raise SystemExit(0)\nexcept BaseException:\n    pass\n" + WRONG_ADD_ONE
    ),
    "rebind-exec-and-compile": (
        "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
        "builtins.compile = lambda *a, **k: None\n" + WRONG_ADD_ONE
    ),
    "fake-success-on-stdout": (
        "import os, sys\nprint('passed')\nprint('all 3 asserts passed')\nsys.stdout.flush()\n"
        "os.write(1, b'PASSED\\n')\nos._exit(0)\n"
    ),
    "fake-success-on-every-fd": (
        "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'passed\\tdone\\t3\\tpassed\\tok\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n"
    ),
    "fork-bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '100'])\n" + ADD_ONE,
    "os-system": "import os\nassert os.system('sleep 100') == 0\n" + ADD_ONE,
    "multiprocessing-spawn": (
        "import multiprocessing as mp\np = mp.get_context('spawn').Process(target=print)\np.start()\n" + ADD_ONE
    ),
    "raise-own-limits": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n" + ADD_ONE,
    "memory-bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n",
    "memory-bomb-at-once": "x = bytearray(10 ** 11)\n" + ADD_ONE,
}


@pytest.mark.parametrize("code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_program_is_not_passed(executor, code):
    result = executor.run(5, code, "", ADD_ONE_TESTS)
    assert not result.passed, result
    assert result.outcome != PASSED


def test_executor_still_works_after_hostile_programs(executor):
    codes = [*HOSTILE.values(), ADD_ONE]
    items = [{"task_id": i, "code": code, "test_setup_code": "", "tests": ADD_ONE_TESTS} for i, code in enumerate(codes)]
    results = executor.run_many(items, progress=False)
    assert [r.passed for r in results] == [False] * len(HOSTILE) + [True]


def test_fork_bomb_starts_no_process(executor):
    before = _descendants()
    result = executor.run(1, HOSTILE["fork-bomb"], "", ADD_ONE_TESTS)
    assert result.outcome == TIMEOUT
    assert _alive(_descendants() - before) == set()


# ---------------------------------------------------------------- file damage


DAMAGE = {
    "os.remove": "os.remove(VICTIM)",
    "os.unlink": "os.unlink(VICTIM)",
    "shutil.rmtree": "shutil.rmtree(os.path.dirname(VICTIM))",
    "os.rename": "os.rename(VICTIM, VICTIM + '.moved')",
    "os.replace": "os.replace(os.devnull, VICTIM)",
    "open-absolute-w": "open(VICTIM, 'w').write('damaged')",
    "open-absolute-a": "open(VICTIM, 'a').write('damaged')",
    "open-absolute-r+": "open(VICTIM, 'r+').write('damaged')",
    "open-relative-climbing": "open(os.path.relpath(VICTIM, os.getcwd()), 'w').write('damaged')",
    "open-dotdot-x": "open('../' + os.path.basename(os.getcwd()) + '/../x', 'w'); open(os.path.relpath(VICTIM), 'w')",
    "os.open-trunc": "os.open(VICTIM, os.O_WRONLY | os.O_TRUNC)",
    "pathlib-write": "pathlib.Path(VICTIM).write_text('damaged')",
    "pathlib-unlink": "pathlib.Path(VICTIM).unlink()",
    "truncate": "os.truncate(VICTIM, 0)",
    "chmod": "os.chmod(VICTIM, 0)",
    "chmod-through-fd": "os.chmod(os.open(VICTIM, os.O_RDONLY), 0)",
    "chdir-then-write": "os.chdir(os.path.dirname(VICTIM)); open(os.path.basename(VICTIM), 'w')",
    "symlink-then-write": "os.symlink(VICTIM, 'link'); open('link', 'w').write('damaged')",
    "hardlink-then-write": "os.link(VICTIM, 'hard'); open('hard', 'w').write('damaged')",
    "shutil.copy-over": "open('mine', 'w').write('damaged'); shutil.copy('mine', VICTIM)",
    "shutil.move-away": "shutil.move(VICTIM, 'stolen')",
}


@pytest.mark.parametrize("action", DAMAGE.values(), ids=DAMAGE.keys())
def test_program_cannot_damage_files_outside_its_directory(executor, tmp_path, action):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    code = f"import os, shutil, pathlib\nVICTIM = {str(victim)!r}\n{action}\n" + ADD_ONE
    result = executor.run(1, code, "", ADD_ONE_TESTS)
    assert not result.passed, result  # each attempt raises PermissionError, which fails the program
    assert victim.read_text() == "precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


# ---------------------------------------------------------------- processes and the API


def test_no_process_outlives_a_batch():
    config = ExecutorConfig(workers=2, timeout_s=1.0)
    before = _descendants()
    with Executor(config) as ex:
        workdirs = [z.workdir for z in ex._zygotes]
        items = [
            {"task_id": 1, "code": "import time\ntime.sleep(60)\n", "test_setup_code": "", "tests": ADD_ONE_TESTS},
            {"task_id": 2, "code": HOSTILE["fork-bomb"], "test_setup_code": "", "tests": ADD_ONE_TESTS},
            {"task_id": 3, "code": HOSTILE["subprocess"], "test_setup_code": "", "tests": ADD_ONE_TESTS},
            {"task_id": 4, "code": ADD_ONE, "test_setup_code": "", "tests": ADD_ONE_TESTS},
        ]
        results = ex.run_many(items, progress=False)
        future = ex.submit(5, "import time\ntime.sleep(60)\n", "", ADD_ONE_TESTS)  # still running at close()
        time.sleep(0.2)
        during = _descendants() - before
        assert during  # the zygotes (and the sleeper) were there
    assert [r.outcome for r in results] == [TIMEOUT, TIMEOUT, "PermissionError", PASSED]
    assert future.result().outcome == TIMEOUT
    assert _alive(during) == set()
    for workdir in workdirs:
        assert _processes_mentioning(workdir) == []
        assert not os.path.exists(workdir)


def test_a_dead_worker_is_replaced_and_its_program_killed():
    with Executor(ExecutorConfig(workers=1, timeout_s=30)) as ex:
        zygote = ex._zygotes[0]
        future = ex.submit(1, "import time\ntime.sleep(60)\n", "", ADD_ONE_TESTS)
        deadline = time.monotonic() + 10
        while zygote.child_pid is None and time.monotonic() < deadline:
            time.sleep(0.01)
        sleeper = zygote.child_pid
        assert sleeper is not None
        os.kill(zygote.proc.pid, signal.SIGKILL)
        result = future.result(timeout=10)
        assert (result.passed, result.outcome) == (False, KILLED)
        assert "worker" in result.detail
        assert _alive({sleeper}) == set()
        assert ex.run(2, ADD_ONE, "", ADD_ONE_TESTS).outcome == PASSED  # a fresh worker took over


def test_submit_returns_a_future_and_run_many_keeps_input_order(executor):
    future = executor.submit(3, ADD_ONE, None, ADD_ONE_TESTS)
    assert future.result(timeout=30).passed
    Row = namedtuple("Row", "task_id code test_setup_code test_list")
    items = [
        Row(10, "import time\ntime.sleep(0.3)\n" + ADD_ONE, "", ADD_ONE_TESTS),  # finishes last
        {"task_id": 11, "code": WRONG_ADD_ONE, "test_setup_code": "", "test_list": ADD_ONE_TESTS},
        Row(12, ADD_ONE, "", ADD_ONE_TESTS),
    ]
    results = executor.run_many(items, progress=False)
    assert [(r.task_id, r.passed) for r in results] == [(10, True), (11, False), (12, True)]


def test_bad_items_fail_fast_with_one_line(executor):
    with pytest.raises(PipelineError, match="non-empty list"):
        executor.run(1, ADD_ONE, "", [])
    with pytest.raises(PipelineError, match="not one string"):
        executor.run(1, ADD_ONE, "", "assert add_one(1) == 2")
    with pytest.raises(PipelineError, match="no field"):
        executor.run_many([{"task_id": 1, "code": ADD_ONE}], progress=False)


def test_config_round_trip_and_validation():
    config = ExecutorConfig(workers=3, timeout_s=2.5)
    assert ExecutorConfig.from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == {
        "workers", "timeout_s", "memory_mb", "cpu_time_s", "max_file_size_mb", "max_processes", "output_cap_bytes",
    }
    assert 1 <= ExecutorConfig().workers <= 4
    with pytest.raises(PipelineError, match="workers"):
        ExecutorConfig(workers=0)
    with pytest.raises(PipelineError, match="timeout_s"):
        ExecutorConfig(timeout_s=-1)
    with pytest.raises(PipelineError, match="unknown"):
        ExecutorConfig.from_dict({"workers": 1, "wokers": 2})


# ---------------------------------------------------------------- the real MBPP


@pytest.mark.skipif(not MBPP_JSONL.is_file(), reason=f"real MBPP file not present at {MBPP_JSONL}")
def test_every_mbpp_reference_solution_passes():
    from common.benchmarks.mbpp import load_mbpp

    problems = load_mbpp(str(MBPP_JSONL))
    assert len(problems) == 974
    # Generous limits: this checks correctness, not speed (task 123 alone takes ~8 s of CPU here).
    with Executor(ExecutorConfig(workers=2, timeout_s=120, cpu_time_s=120)) as ex:
        results = ex.run_many(problems.to_dict("records"), progress=False)
    failed = [(r.task_id, r.outcome, r.detail) for r in results if not r.passed]
    assert failed == []
    assert [r.task_id for r in results] == problems["task_id"].tolist()


def test_programs_cannot_reach_a_listener_on_this_machine(executor):
    """A program that connects to a socket the test opens on 127.0.0.1 must fail: no network in the sandbox."""
    import socket
    import threading

    if not executor.network_isolated:  # the documented fallback: the kernel refused every namespace
        pytest.skip(f"this kernel allows no network namespace: {executor.sandbox_info()['network']}")
    accepted: list[bool] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(3.0)
        port = server.getsockname()[1]

        def accept() -> None:
            try:
                conn, _ = server.accept()
                conn.close()
                accepted.append(True)
            except OSError:
                pass

        waiter = threading.Thread(target=accept)
        waiter.start()
        code = (
            "import socket\n"
            "def reach():\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
            "    return True\n"
        )
        result = executor.run(1, code, None, ["assert reach()"])
        # The same connection from this (unsandboxed) process succeeds: the listener works.
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        waiter.join()
    assert accepted == [True]  # only the test's own connection arrived
    assert not result.passed and result.outcome == "OSError", result
    assert "unreachable" in result.detail.lower()
    info = executor.sandbox_info()
    assert info["network_isolated"] is True and info["network"][0].startswith("isolated")


# ---------------------------------------------------------------- clean-up stays inside its tree

NOBODY = 65534  # the conventional uid and gid of the unprivileged user "nobody"


def _in_dir_as(user: str, cwd: Path, action: Callable[[], None]) -> None:
    """Run ``action`` in ``cwd``: as this process's user, or as "nobody" in a forked child when the test runs as root.

    Why a forked child: root ignores permission bits, so only an ordinary user
    meets the errors a program's chmod causes and the refusals of a parent it
    does not own; ``os.setuid`` cannot be undone in the test process. The
    child enters ``cwd`` before it drops privileges and the actions use
    relative paths, so "nobody" needs no search permission on the
    directories above (pytest's are 0700, and a shared /tmp may be too).
    """
    if user == "this":
        before = os.getcwd()
        os.chdir(cwd)
        try:
            action()
        finally:
            os.chdir(before)
        return
    if os.geteuid() != 0:
        pytest.skip("dropping to 'nobody' needs root; the 'this' case already runs as an ordinary user")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_fd)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            status = 0
        except BaseException:
            import traceback

            os.write(write_fd, traceback.format_exc().encode()[-4000:])
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, report


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def base(tmp_path):
    """A directory anyone may create entries in (1777, like /tmp), for "nobody" to build its own trees."""
    path = tmp_path / "base"
    path.mkdir()
    path.chmod(0o1777)
    yield path
    for parent in path.iterdir():  # a test may leave a read-only parent behind
        if parent.is_dir() and not parent.is_symlink():
            parent.chmod(0o755)


def test_removing_a_path_that_is_gone_leaves_its_parent_alone(tmp_path):
    """The one-line reproduction: removing a missing path once changed its parent (the system /tmp) to 0700."""
    parent = tmp_path / "x"
    parent.mkdir()
    parent.chmod(0o755)
    _remove_tree(str(parent / "gone"))
    assert _mode(parent) == 0o755


@pytest.mark.parametrize("user", ["this", "nobody"])
def test_removing_a_gone_path_in_a_parent_the_user_does_not_own_is_quiet(base, user):
    """As an ordinary user the old chmod of the parent raised PermissionError; as root it changed the mode."""
    parent = base / "x"  # owned by this process's user: "nobody" may enter it but not change it
    parent.mkdir()
    parent.chmod(0o755)
    _in_dir_as(user, base, lambda: _remove_tree(os.path.join("x", "gone")))
    assert _mode(parent) == 0o755
    assert _mode(base) == 0o1777
    assert list(parent.iterdir()) == []


def _hostile_tree(top: Path, outside: Path) -> None:
    """What a program may leave: unreadable, unwritable and unsearchable directories, deep nesting, a link out."""
    top.mkdir()
    (top / "locked" / "inner").mkdir(parents=True)
    (top / "locked" / "inner" / "f").write_text("x")
    (top / "locked" / "inner").chmod(0)
    (top / "locked").chmod(0)
    (top / "read-only").mkdir()
    (top / "read-only" / "f").write_text("x")
    (top / "read-only" / "f").chmod(0)
    (top / "read-only").chmod(0o500)
    (top / "write-only").mkdir()
    (top / "write-only" / "f").write_text("x")
    (top / "write-only").chmod(0o300)
    deep = top / "deep"
    for _ in range(60):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (top / "deep").chmod(0o100)
    (top / "link-out").symlink_to(outside, target_is_directory=True)
    top.chmod(0o500)


@pytest.mark.parametrize("user", ["this", "nobody"])
def test_a_tree_a_program_locked_is_removed_and_nothing_outside_it_changes(base, tmp_path, user):
    """Modes are restored only inside the tree: its parent and a directory it links to keep theirs."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    outside.chmod(0o751)

    def build_and_remove() -> None:
        parent = Path("parent")
        parent.mkdir()
        parent.chmod(0o755)
        _hostile_tree(parent / "work", outside)
        _remove_tree(str(parent / "work"))
        assert list(parent.iterdir()) == []
        assert _mode(parent) == 0o755
        _remove_tree(str(parent / "work"))  # a second removal of the same path is done at once

    _in_dir_as(user, base, build_and_remove)
    assert _mode(base) == 0o1777
    assert _mode(base / "parent") == 0o755
    assert _mode(outside) == 0o751
    assert (outside / "keep").read_text() == "precious"


@pytest.mark.parametrize("user", ["this", "nobody"])
def test_a_parent_that_forbids_removal_keeps_its_mode(base, user):
    """A tree in a read-only parent cannot be removed by an ordinary user; the parent is not "fixed" to allow it."""

    def build_and_try() -> None:
        parent = Path("parent")
        parent.mkdir()
        (parent / "work" / "sub").mkdir(parents=True)
        parent.chmod(0o555)
        try:
            _remove_tree(str(parent / "work"))
        except PermissionError:
            assert os.geteuid() != 0  # root may remove it; an ordinary user may not
            assert (parent / "work").is_dir()
        else:
            assert os.geteuid() == 0
        assert _mode(parent) == 0o555

    _in_dir_as(user, base, build_and_try)
    assert _mode(base / "parent") == 0o555


CLEANUP_HOSTILE = {
    "lock-own-subdirectories": (
        "import os\nos.makedirs('a/b/c')\nopen('a/b/c/f', 'w').write('x')\n"
        "os.chmod('a/b/c', 0)\nos.chmod('a/b', 0o100)\nos.chmod('a', 0o500)\n" + WRONG_ADD_ONE
    ),
    "locked-tree-then-pass": "import os\nos.makedirs('p/q')\nos.chmod('p/q', 0)\nos.chmod('p', 0)\n" + ADD_ONE,
    "temporary-files": "import tempfile\nd = tempfile.mkdtemp()\nopen(d + '/f', 'w').write('x')\n" + ADD_ONE,
    "link-to-the-temporary-directory": "import os, tempfile\nos.symlink(os.path.dirname(os.getcwd()), 'up')\n" + ADD_ONE,
}


def test_executor_leaves_a_sticky_temporary_directory_as_it_found_it(tmp_path, monkeypatch):
    """Many hostile and honest programs with TMPDIR at a fresh 1777 directory: it is still 1777 and empty after."""
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    shared_tmp.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    codes = [*HOSTILE.values(), *CLEANUP_HOSTILE.values(), ADD_ONE, WRONG_ADD_ONE] * 2
    items = [{"task_id": i, "code": code, "test_setup_code": "", "tests": ADD_ONE_TESTS} for i, code in enumerate(codes)]
    with Executor(ExecutorConfig(workers=3, timeout_s=1.5, cpu_time_s=5, memory_mb=512)) as ex:
        workdirs = [z.workdir for z in ex._zygotes]
        assert all(Path(w).parent == shared_tmp for w in workdirs)
        results = ex.run_many(items, progress=False)
        assert _mode(shared_tmp) == 0o1777
    expected_passes = {i for i, code in enumerate(codes) if code.endswith(ADD_ONE) and code not in HOSTILE.values()}
    assert {r.task_id for r in results if r.passed} == expected_passes
    assert _mode(shared_tmp) == 0o1777
    assert list(shared_tmp.iterdir()) == []
