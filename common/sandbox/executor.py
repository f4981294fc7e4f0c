"""Sandboxed execution of untrusted, model-written test programs (docs/design.md section 8).

Why a sandbox: Phase 1 labels every generated solution by running it against
the MBPP asserts, and the code comes from a language model. It may loop
forever, eat memory, fork, delete files, call ``sys.exit(0)`` or print
something that looks like success. A label is only worth something if the
program could not fake it and could not damage the machine while trying.

How it is built, and why each part is there:

* Main process: an :class:`Executor` owns ``workers`` *zygote* processes and a
  thread pool that hands each job to an idle zygote. The zygotes are started
  with ``subprocess`` (fork + exec), never by forking the main process, which
  may hold torch/CUDA threads (forking a multi-threaded process can deadlock).
* Zygote: a freshly exec'd, single-threaded Python interpreter that has already
  paid the interpreter start-up and the common stdlib imports. For every program
  it forks ONE fresh child (a fork costs about 1 ms, a new interpreter
  20-40 ms), enforces the wall-time limit from outside, kills the child's
  whole process group, collects the output up to a cap, empties the child's
  temporary directory and sends one JSON line back.
* Child: its own process group (``setpgid``; the zygote already runs in its
  own session with no controlling terminal, so ``setsid`` would add nothing
  but cost: about 1.7 ms more per program here, paid when a session leader
  exits), its own empty temporary directory as working directory (one
  directory per zygote, emptied after every program and removed when the
  zygote stops: a fresh ``rmdir`` per program cost 3 ms on this disk, more
  than the rest of the sandbox), stdin on ``/dev/null`` (reads see end of
  file, as from a closed stdin, without freeing fd 0 for reuse), stdout/stderr on
  pipes, resource limits (address space, CPU time, file size, process count,
  no core files), and an audit hook (``sys.addaudithook``; it cannot be
  removed) that refuses writes and metadata changes outside the temporary
  directory, process creation, signals to other processes and raising limits.
* Harness (in the child): takes private references to everything it needs
  (``os.write``, ``compile``, ``exec``, the real ``AssertionError``, a pipe fd
  and a random nonce created before the fork) before the program runs, then
  executes the solution, the setup code, and each assert as its own compiled
  statement, counting them. Only a verdict line on the private pipe, carrying
  the nonce and a count equal to the number of asserts, followed by a clean
  exit, makes a pass. An exit code of 0 is never enough.

Limits (documented, not hidden): the audit hook stops ordinary Python calls,
not determined attacks. Code that uses ``ctypes`` to call libc, or that digs
the nonce out of the harness's frames (``sys._getframe``, ``gc``), can get
around it; ``os.open(..., dir_fd=...)`` in write mode is judged by its path
relative to the working directory, since the audit event does not carry the
``dir_fd``.

Network: each zygote moves itself into a new, empty network namespace before it
serves any program (``unshare(CLONE_NEWNET)``; as an unprivileged user together
with a new user namespace, ``CLONE_NEWUSER | CLONE_NEWNET``), so every program
it forks has no network at all, not even a listener on 127.0.0.1 (the new
namespace's loopback is down). Done once per zygote because a namespace costs
10-20 ms to create here, more than most programs take to run. Where the kernel
refuses both (user namespaces disabled, a seccomp profile), programs run with
the machine's network: the executor says so once in the log and
:meth:`Executor.sandbox_info` records it for the metadata.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

# Outcome classes (docs/design.md section 2, Phase 1.0). Any other outcome is the name
# of the exception type the program raised (NameError, SyntaxError, ...).
PASSED = "passed"
ASSERTION = "assertion"
TIMEOUT = "timeout"
KILLED = "killed"

_DETAIL_CHARS = 300
_RESULT_CAP_BYTES = 64 * 1024
# Every zygote's command line carries this marker and its work directory, and so
# does every program child (a fork keeps the command line): stray processes can
# be found by either.
ZYGOTE_MARKER = "pva-executor-zygote"
_LIBC: Any = None  # libc through ctypes (for prctl), opened once in the zygote; children inherit it
# The zygote loads this very file by path under a private module name, so it
# never imports the ``common`` package (whose __init__ may grow heavy imports:
# every mapping a zygote holds counts against each child's RLIMIT_AS).
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_pva_executor_zygote', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module._zygote_main(sys.argv[2], sys.argv[3])\n"
)
# Imported once in the zygote so that children do not pay for them: the
# modules MBPP solutions import most (counted over the 974 reference
# solutions), plus what the harness and sandbox use. Preloading changes no
# semantics: a program still has to import a module to see its name.
_PRELOAD = (
    "re", "math", "collections", "heapq", "itertools", "cmath", "operator", "array",
    "bisect", "copy", "datetime", "functools", "string", "random", "types", "typing",
    "fractions", "decimal", "tempfile", "shutil", "resource", "ctypes", "_posixsubprocess",
)


def _pipeline_error(message: str) -> Exception:
    """Build a ``PipelineError`` lazily: the zygote runs this file without the ``common`` package."""
    from common.errors import PipelineError

    return PipelineError(message)


@dataclass
class ExecutorConfig:
    """Limits for one test program, and how many run at once.

    ``max_processes`` is applied as RLIMIT_NPROC = (tasks the user already runs,
    counted when the executor starts) + ``max_processes``, because the kernel
    counts every process and thread of the user, not only the program's; the
    kernel does not apply it to root at all. It is only a backstop: the audit
    hook refuses every Python-level way to start a process (fork, subprocess,
    os.system, exec, posix_spawn, multiprocessing), for root too, so a fork bomb
    stops at its first fork. The headroom is for threads a program may start.

    ``timeout_s`` and ``cpu_time_s``: MBPP task 123's reference solution alone
    needs about 8.5 s of CPU on the 2-core dev VM, so the 10 s defaults leave
    little margin on a slow or loaded machine.
    """

    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    timeout_s: float = 10.0
    memory_mb: int = 4096
    cpu_time_s: float = 10.0
    max_file_size_mb: int = 64
    max_processes: int = 256
    output_cap_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        # Fail fast with one line: these come from CLI flags.
        for name in ("workers", "memory_mb", "max_file_size_mb", "output_cap_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _pipeline_error(f"executor {name} must be a positive integer, got {value!r}")
        if isinstance(self.max_processes, bool) or not isinstance(self.max_processes, int) or self.max_processes < 0:
            raise _pipeline_error(f"executor max_processes must be an integer >= 0, got {self.max_processes!r}")
        for name in ("timeout_s", "cpu_time_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise _pipeline_error(f"executor {name} must be a positive number of seconds, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for metadata files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _pipeline_error(f"unknown executor config keys: {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass
class ExecutionResult:
    """The verdict on one program.

    ``outcome`` is ``passed``, ``assertion`` (an assert failed), ``timeout``,
    ``killed`` (a signal, a resource limit, or the process ended without the
    harness reporting that every assert ran, e.g. ``sys.exit``/``os._exit``),
    or otherwise the name of the exception type raised (``NameError``, ...).
    ``common.sandbox.labelling`` adds ``missing_entry_point`` (a program it does not
    run) and ``no_code`` (an empty program whose asserts failed). ``detail`` is a short human-readable reason.
    """

    task_id: int
    passed: bool
    outcome: str
    detail: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, one row of a results table."""
        return asdict(self)


def _normalise_source(source: str) -> str:
    """Universal newlines, like ``python file.py`` reading a file: MBPP code uses CRLF."""
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _prelude(code: str, test_setup_code: str | None) -> str:
    """Solution code, then the setup code: tasks 367 and 927 build trees with the solution's class."""
    parts = [_normalise_source(code)]
    if test_setup_code:
        parts.append(_normalise_source(test_setup_code))
    return "\n".join(parts)


def build_program(code: str, test_setup_code: str | None, tests: Iterable[str]) -> str:
    """The whole test program as one script: solution, then setup code, then the asserts.

    This is the order docs/design.md rule 3 fixes (every MBPP reference solution passes
    with it). The executor runs the same pieces in the same order, but executes
    each assert as its own statement so that it can count them.
    """
    lines = [_prelude(code, test_setup_code)]
    lines.extend(_normalise_source(test) for test in tests)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Child side: runs in the forked program process, after the fork.
# --------------------------------------------------------------------------


def _make_audit_hook(root: str) -> Callable[[str, tuple[Any, ...]], None]:
    """An audit hook that refuses anything that could change the world outside ``root``.

    Why an audit hook: it sees every ``open`` in write mode and every
    remove/rename/mkdir/chmod... made through Python, and cannot be removed
    once added (the child adds it right before the program runs). Every name
    the hook uses is bound here, so a program that rebinds builtins or module
    attributes does not change the hook. Built once per zygote, not per child.
    """
    root_prefix = root.rstrip(os.sep) + os.sep
    realpath, join, getcwd, fsdecode, readlink, getpid = (
        os.path.realpath, os.path.join, os.getcwd, os.fsdecode, os.readlink, os.getpid,
    )
    _isinstance, _int, _str, _len = isinstance, int, str, len
    _exception, _permission_error = Exception, PermissionError
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    always_writable = frozenset({os.devnull})
    # Opening the directory itself "for writing" only works with O_TMPFILE (an
    # unnamed file inside it, as tempfile.TemporaryFile does): harmless. Every
    # other change to the directory itself (rmdir, chmod, rename) is refused.
    openable = frozenset({os.devnull, root.rstrip(os.sep)})
    # event -> ((index of a path argument, index of its dir_fd argument or -1), ...)
    path_events = {
        "os.remove": ((0, 1),),
        "os.rmdir": ((0, 1),),
        "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),),
        "os.utime": ((0, 3),),
        "os.truncate": ((0, -1),),
        "os.setxattr": ((0, -1),),
        "os.removexattr": ((0, -1),),
        "os.chflags": ((0, -1),),
        "os.lchflags": ((0, -1),),
        "shutil.rmtree": ((0, 1),),
        "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)),
        "os.symlink": ((1, 2),),
    }
    process_events = frozenset(
        {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn"}
    )

    def inside(path: Any, dir_fd: Any, allowed: frozenset[str] = always_writable) -> bool:
        try:
            if _isinstance(path, _int):  # a file descriptor: judge the file it points to
                full = readlink(f"/proc/self/fd/{path}")
            else:
                text = fsdecode(path)
                if _isinstance(dir_fd, _int) and dir_fd >= 0 and not text.startswith("/"):
                    base = readlink(f"/proc/self/fd/{dir_fd}")
                else:
                    base = getcwd()
                full = realpath(join(base, text))
        except _exception:
            return False  # cannot tell where it points: refuse
        return full.startswith(root_prefix) or full in allowed

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if _isinstance(path, _int):
                return  # re-wrapping a descriptor the program already holds grants nothing new
            if _isinstance(flags, _int):
                writing = (flags & write_flags) != 0
            else:
                writing = _isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
            if writing and not inside(path, -1, openable):
                raise _permission_error(f"sandbox: writing {path!r} outside the program's directory is not allowed")
        elif event in path_events:
            for path_index, fd_index in path_events[event]:
                dir_fd = args[fd_index] if 0 <= fd_index < _len(args) else -1
                if not inside(args[path_index], dir_fd):
                    raise _permission_error(
                        f"sandbox: {event} on {args[path_index]!r} outside the program's directory is not allowed"
                    )
        elif event in process_events:
            raise _permission_error(f"sandbox: starting processes is not allowed ({event})")
        elif event == "os.kill":
            own_pid = getpid()
            if args[0] not in (0, own_pid, -own_pid):
                raise _permission_error("sandbox: signalling other processes is not allowed")
        elif event == "os.killpg":
            if args[0] not in (0, getpid()):
                raise _permission_error("sandbox: signalling other process groups is not allowed")
        elif event == "resource.setrlimit" or (event == "resource.prlimit" and _len(args) > 2 and args[2] is not None):
            raise _permission_error("sandbox: changing resource limits is not allowed")
        elif event == "import" and args[0] == "_posixsubprocess":
            # A fresh copy of the module would bring back the real fork_exec.
            raise _permission_error("sandbox: re-importing _posixsubprocess is not allowed")

    return hook


def _refuse_fork_exec(*args: Any, **kwargs: Any) -> NoReturn:
    """Stands in for ``_posixsubprocess.fork_exec``, which raises no audit event of its own."""
    raise PermissionError("sandbox: starting processes is not allowed (_posixsubprocess.fork_exec)")


def _lower_limit(resource_id: int, value: int) -> None:
    """Set soft and hard limit to ``value``, never above the current hard limit (non-root cannot raise it)."""
    import resource

    _, hard = resource.getrlimit(resource_id)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(resource_id, (value, value))


def _apply_limits(config: ExecutorConfig, nproc_limit: int) -> None:
    """Resource limits that the kernel enforces even on code that gets around the audit hook."""
    import math
    import resource

    _lower_limit(resource.RLIMIT_AS, config.memory_mb * 1024 * 1024)
    cpu = max(1, math.ceil(config.cpu_time_s))
    # Soft limit sends SIGXCPU (the process dies: "killed"); the hard limit one second later is SIGKILL.
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)))
    _lower_limit(resource.RLIMIT_FSIZE, config.max_file_size_mb * 1024 * 1024)
    _lower_limit(resource.RLIMIT_NPROC, nproc_limit)
    _lower_limit(resource.RLIMIT_CORE, 0)  # a segfault must not write a core file


def _clip(text: str, limit: int = _DETAIL_CHARS) -> str:
    """One line, at most ``limit`` characters: details end up in parquet cells and logs."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _harness(prelude: str, tests: list[str], result_fd: int, nonce: str) -> None:
    """Run the program and report a verdict on the private pipe; the caller exits right after.

    Why every name is bound before ``exec``: the program shares this process
    and may rebind ``print``, ``AssertionError``, ``exec``, ``os.write`` or
    anything in ``builtins``; the harness only uses the references it took
    first. The verdict goes to a pipe the program was never told about, and
    carries a nonce the program was never told either.
    """
    import builtins
    import types

    _write, _compile, _exec = os.write, compile, exec
    _isinstance, _type, _str, _len, _enumerate = isinstance, type, str, len, enumerate
    _base_exception, _assertion_error = BaseException, AssertionError
    _system_exit, _syntax_error = SystemExit, SyntaxError
    stdout, stderr = sys.stdout, sys.stderr

    def report(kind: str, count: int, outcome: str, detail: str) -> None:
        # Only str methods and slicing here: the program cannot rebind those.
        detail = detail.replace("\t", " ").replace("\r", " ").replace("\n", " ")[:_DETAIL_CHARS]
        line = f"{nonce}\t{kind}\t{count}\t{outcome}\t{detail}\n"
        _write(result_fd, line.encode("utf-8", "replace"))

    def describe(exc: BaseException, where: str) -> tuple[str, str]:
        try:
            message = _str(exc)
        except _base_exception:
            message = "<unprintable exception>"
        if _isinstance(exc, _system_exit):
            return KILLED, f"the program raised SystemExit({message}) {where}"
        name = _type(exc).__name__
        if _isinstance(exc, _syntax_error):
            message = f"{exc.msg} (line {exc.lineno})"  # type: ignore[attr-defined]  # narrowed through a saved isinstance
        return name, f"{name} {where}: {message}" if message else f"{name} {where}"

    main = types.ModuleType("__main__")  # a real module, so pickle/dataclasses find the program's classes
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    namespace = main.__dict__
    try:
        # dont_inherit: the harness's own `from __future__ import annotations` must not leak in;
        # optimize=0: asserts are never compiled away, whatever flags the interpreter has.
        _exec(_compile(prelude, "<solution>", "exec", dont_inherit=True, optimize=0), namespace)
    except _base_exception as exc:
        outcome, detail = describe(exc, "in the solution")
        report("fail", 0, outcome, detail)
        return
    count = 0
    for index, test in _enumerate(tests):
        where = f"in test {index + 1} ({test.strip()})"
        try:
            _exec(_compile(test, f"<test {index + 1}>", "exec", dont_inherit=True, optimize=0), namespace)
        except _base_exception as exc:
            if _isinstance(exc, _assertion_error):
                try:
                    message = _str(exc)
                except _base_exception:
                    message = ""
                detail = f"test {index + 1} failed: {test.strip()}" + (f" ({message})" if message else "")
                report("fail", count, ASSERTION, detail)
            else:
                outcome, detail = describe(exc, where)
                report("fail", count, outcome, detail)
            return
        count += 1
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except _base_exception:
            pass
    report("done", count, PASSED, f"all {count} asserts passed" if count == _len(tests) else "")


def _child_main(
    job: dict[str, Any],
    config: ExecutorConfig,
    nproc_limit: int,
    workdir: str,
    audit_hook: Callable[[str, tuple[Any, ...]], None],
    pipes: tuple[int, int, int],
    nonce: str,
    zygote_pid: int,
) -> NoReturn:
    """Set up the sandbox in the freshly forked child, run the harness, and exit without cleanup."""
    out_w, err_w, result_w = pipes
    status = 70
    try:
        os.setpgid(0, 0)  # own process group: the zygote kills the whole group
        # If the zygote dies (it is killed, or crashes), take this process with it.
        _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != zygote_pid:  # it died before prctl took effect
            os._exit(status)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Close everything inherited from the zygote (its protocol pipes above all) except the verdict pipe.
        os.closerange(3, result_w)
        os.closerange(result_w + 1, max(result_w + 1, os.sysconf("SC_OPEN_MAX")))
        os.chdir(workdir)
        import random
        import tempfile

        os.environ["TMPDIR"] = workdir
        tempfile.tempdir = workdir
        sys.argv = ["solution.py"]
        sys.dont_write_bytecode = True
        random.seed(0)  # reproducible labels: every run of a program sees the same random stream
        _apply_limits(config, nproc_limit)
        import _posixsubprocess

        _posixsubprocess.fork_exec = _refuse_fork_exec
        sys.addaudithook(audit_hook)
        _harness(job["prelude"], job["tests"], result_w, nonce)
        status = 0
    except BaseException:  # a harness bug, not the program: make it visible on the captured stderr
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(status)


# --------------------------------------------------------------------------
# Zygote side: a single-threaded interpreter that forks one child per program.
# --------------------------------------------------------------------------


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(pgid: int) -> None:
    """SIGKILL a whole process group; it may already be gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_until_dead(pid: int, timeout_s: float = 5.0) -> None:
    """Return once ``pid`` has exited (gone or a zombie), after at most ``timeout_s``.

    Why: SIGKILL is delivered asynchronously, so a program whose worker died
    can still be running for a moment after ``killpg`` returns; its result
    must not be reported while it may still write files. The program is not
    our child (it was forked by the dead worker), so ``/proc`` is polled
    rather than waited on.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)
    logger.warning("process %d still runs %.0f s after SIGKILL", pid, timeout_s)


def _remove_tree(path: str) -> None:
    """Remove the directory tree at ``path``, even if a program took away its own permissions.

    Clean-up changes nothing outside the tree it removes: the parent of
    ``path`` is never touched (it is often the system's temporary directory,
    shared by every user and service), and a path that is already gone counts
    as removed (the zygote and the main process both remove a zygote's
    directory, in either order). Only when a first pass fails are the owner's
    permissions restored on the directories of the tree (``path`` included,
    see ``_grant_owner_access``) before one more pass, whose error, if any,
    is raised.
    """
    failures: list[OSError] = []
    _rmtree_collecting(path, failures)
    if not failures:
        return
    _grant_owner_access(path)
    failures.clear()
    _rmtree_collecting(path, failures)
    if failures:
        raise failures[0]


def _rmtree_collecting(path: str, failures: list[OSError]) -> None:
    """``shutil.rmtree`` that goes on past errors, collecting them; an entry that is already gone is no error."""
    import shutil

    def collect(error: BaseException) -> None:
        if isinstance(error, FileNotFoundError):
            return
        if not isinstance(error, OSError):
            raise error
        failures.append(error)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _func, _path, error: collect(error))
    else:
        shutil.rmtree(path, onerror=lambda _func, _path, info: collect(info[1]))


def _grant_owner_access(root: str) -> None:
    """Give the owner read, write and search permission on every directory of the tree at ``root``.

    Why only directories: removing an entry needs write and search permission
    on the directory that holds it, never permission on the entry itself.
    Symbolic links are never followed (``lstat``, ``follow_symlinks=False``),
    so nothing outside the tree changes mode; the parent of ``root`` is never
    looked at. Iterative, so a deeply nested tree cannot exhaust the stack.
    Errors are left to the removal that follows, which reports them.
    """
    import stat

    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            mode = os.lstat(directory).st_mode
            if not stat.S_ISDIR(mode):
                continue
            if mode & 0o700 != 0o700:
                os.chmod(directory, stat.S_IMODE(mode) | 0o700)
            with os.scandir(directory) as entries:
                pending.extend(entry.path for entry in entries if entry.is_dir(follow_symlinks=False))
        except OSError:
            continue


def _empty_dir(workdir: str) -> None:
    """Remove everything a program left in ``workdir``, keeping the directory itself.

    Why reuse one directory per zygote: its programs run one after another, so
    an emptied directory is as private as a new one; most programs leave
    nothing, while creating and removing a directory per program costs
    milliseconds on some disks.
    """
    with os.scandir(workdir) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)


def _classify(
    verdicts: list[list[str]],
    n_tests: int,
    timed_out: bool,
    wait_status: int,
    stderr_tail: str,
    timeout_s: float,
) -> tuple[bool, str, str]:
    """Turn what the zygote saw into (passed, outcome, detail); a pass needs the harness's word."""
    tail = f"; stderr: {stderr_tail}" if stderr_tail else ""
    if timed_out:
        return False, TIMEOUT, f"no verdict within {timeout_s:g} s wall time"
    if len(verdicts) > 1:
        return False, KILLED, f"{len(verdicts)} verdicts on the harness channel (tampering)"
    if verdicts:
        kind, count, outcome, detail = verdicts[0]
        if kind != "done":
            return False, outcome, detail
        if count != str(n_tests):
            return False, KILLED, f"the harness counted {count} of {n_tests} asserts"
        if os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0:
            return True, PASSED, detail
        return False, KILLED, "all asserts ran but the process did not exit cleanly" + tail
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        why = {int(signal.SIGXCPU): " (CPU time limit)", int(signal.SIGXFSZ): " (file size limit)"}.get(number, "")
        return False, KILLED, f"killed by {_signal_name(number)}{why}" + tail
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    return False, KILLED, f"exited with code {code} before the harness reported (sys.exit/os._exit?)" + tail


def _run_job(
    job: dict[str, Any],
    config: ExecutorConfig,
    nproc_limit: int,
    workdir: str,
    audit_hook: Callable[[str, tuple[Any, ...]], None],
    send: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Fork one child for ``job`` in the (empty) ``workdir``, watch it, and return the result as a dict."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    result_r, result_w = os.pipe()
    nonce = os.urandom(16).hex()
    sys.stdout.flush()
    sys.stderr.flush()
    zygote_pid = os.getpid()  # taken before the fork: in the child, getppid() is only right while we live
    start = time.monotonic()
    try:
        pid = os.fork()
    except OSError:
        for fd in (out_r, out_w, err_r, err_w, result_r, result_w):
            os.close(fd)
        raise
    if pid == 0:
        _child_main(job, config, nproc_limit, workdir, audit_hook, (out_w, err_w, result_w), nonce, zygote_pid)
    for fd in (out_w, err_w, result_w):
        os.close(fd)
    send({"started": pid})
    caps = {out_r: config.output_cap_bytes, err_r: config.output_cap_bytes, result_r: _RESULT_CAP_BYTES}
    buffers = {fd: bytearray() for fd in caps}
    poller = select.poll()
    for fd in caps:
        poller.register(fd, select.POLLIN)
    try:
        opened = os.pidfd_open(pid)
        poller.register(opened, select.POLLIN)
        pidfd: int | None = opened
    except (AttributeError, OSError):  # kernel < 5.3: poll the child's state every 10 ms instead
        pidfd = None
    open_fds = set(caps)

    def read_ready(timeout_ms: float) -> None:
        for fd, _ in poller.poll(timeout_ms):
            if fd not in open_fds:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
            elif len(buffers[fd]) < caps[fd]:  # past the cap: keep draining, keep nothing
                buffers[fd] += chunk[: caps[fd] - len(buffers[fd])]

    deadline = start + config.timeout_s
    timed_out = False
    while True:
        # WNOWAIT: notice the exit without reaping, so the group id stays ours until it is killed.
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        read_ready(remaining * 1000 if pidfd is not None else min(remaining * 1000, 10))
    duration = time.monotonic() - start
    _kill_group(pid)  # whatever the program left running in its group goes too
    if timed_out:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, wait_status = os.waitpid(pid, 0)
    # Drain what is left; a pipe still held open by a process that escaped the group must not hang us.
    drain_deadline = time.monotonic() + 0.5
    while open_fds and time.monotonic() < drain_deadline:
        read_ready(50)
    if pidfd is not None:
        os.close(pidfd)
    for fd in caps:
        os.close(fd)
    _empty_dir(workdir)

    prefix = nonce + "\t"
    verdicts = [
        line[len(prefix):].split("\t", 3)
        for line in buffers[result_r].decode("utf-8", "replace").splitlines()
        if line.startswith(prefix) and line.count("\t") >= 4
    ]
    stderr_tail = _clip(buffers[err_r].decode("utf-8", "replace")[-400:], 200)
    passed, outcome, detail = _classify(
        verdicts, len(job["tests"]), timed_out, wait_status, stderr_tail, config.timeout_s
    )
    return {
        "task_id": job["task_id"],
        "passed": passed,
        "outcome": outcome,
        "detail": _clip(detail),
        "duration_s": round(duration, 6),
    }


_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
NETWORK_ISOLATED = "isolated"


def _isolate_network() -> str:
    """Move this process into a new, empty network namespace; say how, or why not.

    Plain ``CLONE_NEWNET`` first (root, or CAP_SYS_ADMIN): the process keeps
    its identity. Otherwise a new user namespace too, with this user mapped to
    itself so that ``os.getuid()`` inside reads the same (best effort: without
    the map it reads 65534; file access is unchanged either way, the kernel
    checks the real user).
    """
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    if _LIBC.unshare(_CLONE_NEWNET) == 0:
        return f"{NETWORK_ISOLATED}: new network namespace"
    first = os.strerror(ctypes.get_errno())
    if _LIBC.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        second = os.strerror(ctypes.get_errno())
        return f"not isolated: unshare(CLONE_NEWNET) failed ({first}), with CLONE_NEWUSER too ({second})"
    for name, text in (("uid_map", f"{uid} {uid} 1\n"), ("setgroups", "deny\n"), ("gid_map", f"{gid} {gid} 1\n")):
        try:
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
        except OSError:
            break
    return f"{NETWORK_ISOLATED}: new user and network namespace"


def _zygote_main(config_json: str, workdir: str) -> None:
    """Entry point of a zygote process: one job per line on stdin, one JSON line per event on stdout."""
    import ctypes
    import gc
    import importlib

    global _LIBC
    _LIBC = ctypes.CDLL(None, use_errno=True)
    network = _isolate_network()  # before any program runs: every child inherits it
    settings = json.loads(config_json)
    nproc_limit = int(settings.pop("nproc_limit"))
    config = ExecutorConfig.from_dict(settings)
    for name in _PRELOAD:
        importlib.import_module(name)
    # Private copies of the protocol pipes; fd 0 and 1 become harmless so that
    # nothing the zygote prints by accident can corrupt the protocol.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)

    def send(message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            written = os.write(proto_out, data)
            data = data[written:]

    audit_hook = _make_audit_hook(os.path.realpath(workdir))
    gc.collect()
    gc.freeze()  # keep the heap pages shared with the children instead of copied on first touch
    try:
        send({"ready": os.getpid(), "network": network})
        for line in proto_in:  # EOF: the executor closed us, or the main process died
            job = json.loads(line)
            try:
                result = _run_job(job, config, nproc_limit, workdir, audit_hook, send)
            except Exception as exc:  # an executor bug or a broken machine (disk full): report, keep serving
                logger.exception("executor worker failed on task %s", job.get("task_id"))
                send({"error": f"{type(exc).__name__}: {exc}"})
            else:
                send({"result": result})
    except BrokenPipeError:
        pass  # the main process died: nobody is left to answer
    finally:  # the main process removes it too; this covers a main process that died
        try:
            _remove_tree(workdir)
        except OSError:
            pass


# --------------------------------------------------------------------------
# Main-process side.
# --------------------------------------------------------------------------


class _WorkerLost(Exception):
    """The zygote died or stopped answering."""


def _count_user_tasks() -> int:
    """How many tasks (processes and threads) this user runs: what the kernel counts for RLIMIT_NPROC."""
    uid = os.getuid()
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                total += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:  # the process ended while we looked
            continue
    return total


class _Zygote:
    """Main-process handle on one zygote process."""

    def __init__(self, settings_json: str) -> None:
        import tempfile

        # Created and removed here, in the main process, so that it goes away even if the zygote is killed.
        self.workdir = tempfile.mkdtemp(prefix="pva_exec_")
        env = dict(os.environ)
        env.update(
            PYTHONHASHSEED="0",  # the same set/dict order in every run: reproducible labels
            PYTHONDONTWRITEBYTECODE="1",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        script = str(Path(__file__).resolve())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, script, settings_json, self.workdir, ZYGOTE_MARKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in the terminal reaches the main process, not the zygotes
            env=env,
            close_fds=True,
        )
        self._buffer = bytearray()
        self._poller = select.poll()  # poll, not select: fds above 1024 are common next to torch
        assert self.proc.stdout is not None
        self._poller.register(self.proc.stdout.fileno(), select.POLLIN)
        self.child_pid: int | None = None
        self.network = "unknown"  # how the zygote isolated its network, from its ready message

    def _read_message(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerLost("no answer from the executor worker")
            if self._poller.poll(remaining * 1000):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise _WorkerLost(f"executor worker {self.proc.pid} ended unexpectedly")
                self._buffer += chunk
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        message = self._read_message(time.monotonic() + timeout_s)
        if "ready" not in message:
            raise RuntimeError(f"executor worker sent {message!r} instead of 'ready'")
        self.network = str(message.get("network", "unknown"))

    def run(self, job: dict[str, Any], backstop_s: float) -> dict[str, Any]:
        """Send one job and wait for its result; ``backstop_s`` only matters if the zygote hangs."""
        assert self.proc.stdin is not None
        self.child_pid = None
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise _WorkerLost(f"executor worker {self.proc.pid} is gone: {exc}")
        deadline = time.monotonic() + backstop_s
        while True:
            message = self._read_message(deadline)
            if "started" in message:
                self.child_pid = int(message["started"])
            elif "result" in message:
                self.child_pid = None
                return message["result"]
            else:
                raise RuntimeError(f"executor worker failed: {message.get('error', message)}")

    def kill(self) -> None:
        """Kill the zygote and whatever program it was running."""
        if self.child_pid is not None:
            _kill_group(self.child_pid)
        _kill_group(self.proc.pid)
        self.proc.wait()
        if self.child_pid is not None:
            _wait_until_dead(self.child_pid)
        self._close_pipes()
        self._remove_workdir()

    def close(self, timeout_s: float) -> None:
        """Ask the zygote to exit (EOF on its stdin); kill it if it does not."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("executor worker %d did not exit; killing it", self.proc.pid)
            self.kill()
        self._close_pipes()
        self._remove_workdir()

    def _remove_workdir(self) -> None:
        try:
            _remove_tree(self.workdir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove the sandbox directory %s: %s", self.workdir, exc)

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _stop_zygotes(zygotes: list[_Zygote]) -> None:
    """Stop every zygote; a module-level function so that a finalizer can call it without the executor."""
    for zygote in list(zygotes):
        zygote.close(timeout_s=5.0)


def _field(item: Any, *names: str) -> Any:
    """``item.name`` or ``item[name]`` for the first name present (dicts, dataclasses, namedtuples)."""
    for name in names:
        if isinstance(item, Mapping):
            if name in item:
                return item[name]
        elif hasattr(item, name):
            return getattr(item, name)
    raise _pipeline_error(f"executor item {item!r:.80} has no field {' or '.join(names)}")


class Executor:
    """A pool of sandboxed workers that run test programs; use it as a context manager.

    ``run`` blocks for one program, ``submit`` returns a future (so Phase 1 can
    test solutions on CPU workers while the GPU keeps generating), ``run_many``
    runs a batch with a progress bar. ``close`` waits for running programs
    (each at most ``timeout_s``) and leaves no process behind.
    """

    def __init__(self, config: ExecutorConfig | None = None) -> None:
        self.config = config or ExecutorConfig()
        settings = self.config.to_dict()
        settings["nproc_limit"] = _count_user_tasks() + self.config.max_processes
        self._settings_json = json.dumps(settings)
        self._lock = threading.Lock()
        self._closed = False
        self._zygotes: list[_Zygote] = []
        self._idle: queue.SimpleQueue[_Zygote] = queue.SimpleQueue()
        try:
            for _ in range(self.config.workers):
                self._zygotes.append(_Zygote(self._settings_json))
            for zygote in self._zygotes:  # they start in parallel; wait for all
                zygote.wait_ready()
                self._idle.put(zygote)
        except BaseException:
            for zygote in self._zygotes:
                zygote.kill()
            raise
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="pva-executor"
        )
        # Safety net for an executor that is dropped without close(): subprocess keeps
        # a running Popen alive (subprocess._active), so the zygote would never see EOF.
        self._finalizer = weakref.finalize(self, _stop_zygotes, self._zygotes)
        logger.info("executor ready: %s", self.config.to_dict())
        _warn_once_without_network_isolation(self._zygotes[0].network if self._zygotes else "unknown")

    @property
    def network_isolated(self) -> bool:
        """True when every worker runs its programs without network."""
        return all(z.network.startswith(NETWORK_ISOLATED) for z in self._zygotes)

    def sandbox_info(self) -> dict[str, Any]:
        """What the sandbox enforced, for metadata files: limits and network isolation."""
        return {
            **self.config.to_dict(),
            "network_isolated": self.network_isolated,
            "network": sorted({z.network for z in self._zygotes}),
        }

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(
        self, task_id: int, code: str, test_setup_code: str | None, tests: Iterable[str]
    ) -> concurrent.futures.Future[ExecutionResult]:
        """Queue one program; the future resolves to its :class:`ExecutionResult`."""
        job = self._job(task_id, code, test_setup_code, tests)
        if self._closed:
            raise RuntimeError("the executor is closed")
        return self._pool.submit(self._execute, job)

    def run(self, task_id: int, code: str, test_setup_code: str | None, tests: Iterable[str]) -> ExecutionResult:
        """Run one program and wait for its verdict."""
        return self.submit(task_id, code, test_setup_code, tests).result()

    def run_many(self, items: Iterable[Any], progress: bool = True) -> list[ExecutionResult]:
        """Run a batch in parallel; results come back in input order.

        Each item is a dict or an object with ``task_id``, ``code``,
        ``test_setup_code`` and ``tests`` (``test_list`` is accepted too, so MBPP
        rows work as they are). All items are checked before anything runs.
        """
        from tqdm import tqdm

        jobs = [
            self._job(
                _field(item, "task_id"),
                _field(item, "code"),
                _field(item, "test_setup_code"),
                _field(item, "tests", "test_list"),
            )
            for item in items
        ]
        if self._closed:
            raise RuntimeError("the executor is closed")
        futures = [self._pool.submit(self._execute, job) for job in jobs]
        try:
            with tqdm(total=len(futures), disable=not progress, desc="running tests", unit="prog") as bar:
                for future in concurrent.futures.as_completed(futures):
                    future.result()  # an executor failure surfaces now, not after the whole batch
                    bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]

    def close(self) -> None:
        """Finish running programs, stop the workers, and leave no process behind."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._finalizer()  # stops the zygotes, once
        logger.debug("executor closed")

    @staticmethod
    def _job(task_id: Any, code: Any, test_setup_code: Any, tests: Any) -> dict[str, Any]:
        """Check one program's fields and turn them into the message a zygote runs."""
        if not isinstance(code, str):
            raise _pipeline_error(f"task {task_id}: code must be a string, got {type(code).__name__}")
        if test_setup_code is not None and not isinstance(test_setup_code, str):
            raise _pipeline_error(f"task {task_id}: test_setup_code must be a string or None")
        if isinstance(tests, str):
            raise _pipeline_error(f"task {task_id}: tests must be a list of assert statements, not one string")
        test_list = list(tests)
        if not test_list or not all(isinstance(test, str) for test in test_list):
            raise _pipeline_error(f"task {task_id}: tests must be a non-empty list of strings")
        return {
            "task_id": int(task_id),
            "prelude": _prelude(code, test_setup_code),
            "tests": [_normalise_source(test) for test in test_list],
        }

    def _execute(self, job: dict[str, Any]) -> ExecutionResult:
        """Runs on a pool thread: borrow an idle zygote, run the job, replace the zygote if it died."""
        zygote = self._idle.get()
        start = time.monotonic()
        try:
            try:
                raw = zygote.run(job, backstop_s=self.config.timeout_s + 30.0)
            except _WorkerLost as exc:
                logger.warning("task %s: %s; starting a new worker", job["task_id"], exc)
                zygote = self._replace(zygote)
                raw = {
                    "task_id": job["task_id"],
                    "passed": False,
                    "outcome": KILLED,
                    "detail": _clip(f"the worker running the program died: {exc}"),
                    "duration_s": round(time.monotonic() - start, 6),
                }
            return ExecutionResult(**raw)
        finally:
            self._idle.put(zygote)

    def _replace(self, dead: _Zygote) -> _Zygote:
        dead.kill()
        fresh = _Zygote(self._settings_json)
        with self._lock:
            self._zygotes[self._zygotes.index(dead)] = fresh
        fresh.wait_ready()
        return fresh


_warned_network: list[str] = []


def _warn_once_without_network_isolation(network: str) -> None:
    """One warning per process when programs run with the machine's network."""
    if network.startswith(NETWORK_ISOLATED) or _warned_network:
        return
    _warned_network.append(network)
    logger.warning("sandbox: programs run WITH network access: %s", network)


def executor_config_for(cfg: Any) -> ExecutorConfig:
    """The executor limits a pipeline config asks for (``--workers``, ``--timeout``).

    The CPU-time limit follows the wall-time limit: a slow but honest program
    (MBPP task 123 needs seconds of CPU) must time out on neither.
    """
    return ExecutorConfig(
        workers=cfg.workers, timeout_s=cfg.timeout_s, cpu_time_s=cfg.timeout_s, memory_mb=cfg.memory_mb
    )
