"""Errors, lookups and result files shared by the plugin's modules."""

import contextlib
import csv
import difflib
import fcntl
import io
import os
import pkgutil
import re
import signal
import threading
import time

import recbole.model
import torch
from recbole.utils import get_model as get_recbole_model


class CrossMarketError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop) as an interrupt: the same clean-up as Ctrl-C."""


def raise_terminated(signum, frame):
    """A SIGTERM handler: ``signal.signal(signal.SIGTERM, raise_terminated)``."""
    raise Terminated


def interrupt_line(err, outcome):
    """A command's one line and exit status for Ctrl-C or SIGTERM, saying what became of its output."""
    word, signum = ("terminated", signal.SIGTERM) if isinstance(err, Terminated) else ("interrupted", signal.SIGINT)
    return f"error: {word}; {outcome}", 128 + signum


def io_error_line(err, advice):
    """A command's one line for a failed read or write (a read-only or full output folder, a missing input)."""
    where = f" {err.filename}" if err.filename else ""
    return f"error: cannot write or read{where}: {err.strerror or err}; {advice}"


def name_list(text, flag):
    """``"Pop, EASE"`` -> ``["Pop", "EASE"]``: a comma list of a command-line ``flag``, blanks around names ignored,
    each name given once."""
    names = [name.strip() for name in text.split(",")]
    if "" in names:
        raise CrossMarketError(f"{flag} has an empty name in {text!r}; separate the names by single commas")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CrossMarketError(f"{flag} lists {', '.join(repeated)} more than once; give each once")
    return names


def int_list(text, flag):
    """``"1,2,3"`` -> ``[1, 2, 3]``, or say which flag is malformed."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CrossMarketError(f"{flag} must be comma separated integers, got {text!r}") from None


def positive_int(text, flag):
    """``"4"`` -> ``4``: a command-line count of at least one, or say which flag is malformed."""
    if not text.strip().isdigit() or int(text) < 1:
        raise CrossMarketError(f"{flag} must be an integer >= 1, got {text!r}")
    return int(text)


def plugin_model_names():
    """Model classes this plugin adds, by class name: every RecBole recommender defined in a module of
    ``recbole_cmr/model/`` (a new model is found by its file alone); names starting with ``_`` are bases."""
    import importlib
    import inspect

    from recbole.model.abstract_recommender import AbstractRecommender

    from recbole_cmr import model as package

    found = {}
    importlib.invalidate_caches()  # a model file added while the process runs is found too
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, AbstractRecommender) and cls.__module__ == module.__name__ and not name.startswith("_"):
                found[name] = cls
    return found


def recbole_model_names():
    """Class names of RecBole's built-in models, read from their source files without importing them."""
    names = []
    root = recbole.model.__path__[0]
    for pkg in pkgutil.iter_modules([root]):
        if pkg.ispkg and pkg.name.endswith("_recommender"):
            folder = os.path.join(root, pkg.name)
            for module in pkgutil.iter_modules([folder]):
                with open(os.path.join(folder, module.name + ".py"), encoding="utf-8") as f:
                    classes = re.findall(r"^class (\w+)\(", f.read(), flags=re.M)
                names += [c for c in classes if c.lower() == module.name] or [module.name]
    return names


def get_model(model_name):
    """Plugin models first, then RecBole's ``get_model``; unknown names suggest near matches."""
    plugin = plugin_model_names()
    if model_name in plugin:
        return plugin[model_name]
    anomaly_mode = torch.is_anomaly_enabled()
    try:
        return get_recbole_model(model_name)
    except (ValueError, AttributeError, ImportError):  # RecBole imports lightgbm/xgboost while searching
        pass
    finally:  # importing RecBole's sequential models (sine.py) turns autograd anomaly detection on for the process
        torch.autograd.set_detect_anomaly(anomaly_mode)
    known = list(dict.fromkeys(list(plugin) + recbole_model_names()))  # plugin models can shadow RecBole's (Pop)
    close = difflib.get_close_matches(model_name.lower(), [k.lower() for k in known], n=3, cutoff=0.6)
    by_lower = {k.lower(): k for k in known}
    hint = f" Did you mean: {', '.join(by_lower.get(c, c) for c in close)}?" if close else ""
    raise CrossMarketError(
        f"unknown model {model_name!r}.{hint} Model names are case-sensitive class names, "
        "e.g. ACMR, Pop, BPR, EASE, LightGCN, SASRec (any RecBole model)."
    )


def read_csv_rows(path):
    """Rows of a results CSV as dicts; [] if the file does not exist yet."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends, then act on the first one as it would have been: an
    interrupt inside ``torch.save`` surfaces as a RuntimeError from its zip writer, not as the interrupt.
    Python runs signal handlers in the main thread only, so elsewhere the block runs as it is."""
    signums = (signal.SIGINT, signal.SIGTERM)
    handlers = {signum: signal.getsignal(signum) for signum in signums}
    if threading.current_thread() is not threading.main_thread() or None in handlers.values():
        yield  # None: a handler installed outside Python, which this could not put back
        return
    caught = []
    for signum in signums:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if caught and callable(handlers[caught[0]]):
            handlers[caught[0]](caught[0], None)
        elif caught and handlers[caught[0]] == signal.SIG_DFL:
            signal.raise_signal(caught[0])


def write_atomically(path, write, mode="w"):
    """Call ``write(file)`` on a temporary file renamed to ``path`` when complete, so an interrupted run or a
    full disk never leaves half a file (the temporary file is removed on failure). An interrupt during the
    write takes effect when ``write`` returns, before the rename: ``path`` keeps its previous content."""
    tmp = path + ".tmp"
    try:
        with open(tmp, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            with interrupts_deferred():
                write(f)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.isfile(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename in (tmp, path, None):
            raise OSError(err.errno, err.strerror, path) from None  # the file asked for, not the temporary one
        raise


def write_torch(path, obj):
    """``torch.save(obj)`` to ``path`` atomically. The bytes are made in memory and then written: torch's zip
    writer turns a failed write (a full disk) into a RuntimeError naming no file, a plain write into an OSError."""

    def write(f):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        f.write(buffer.getbuffer())

    write_atomically(path, write, mode="wb")


def try_lock(path, wait=False):
    """An exclusive ``flock`` on ``path`` (a folder, or a file created if missing): the open descriptor, held until
    :func:`release` or the process's end (a killed process's locks go with it), or ``None`` if another holder has
    it (``wait``: wait for it instead). Two processes sharing a results folder use it to tell a live run from a
    killed one."""
    fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(fd):
    """Give up a lock taken by :func:`try_lock`."""
    if fd is not None:
        os.close(fd)


def is_locked(path):
    """Whether another holder has :func:`try_lock` on the folder ``path`` now (not if it is gone, e.g. renamed by
    the run that finished in it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock on the file ``path`` for the block, waiting for any other holder to finish."""
    fd = try_lock(path, wait=True)
    try:
        yield
    finally:
        release(fd)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    write_atomically(path, lambda f: f.write(text))


def write_csv_rows(path, rows, fields=None):
    """Write rows as CSV atomically."""
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(path, write)


def _busy_cores_of_other_processes(window=0.25):
    """Cores kept busy by other processes over a short window (from /proc/stat, minus this process)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        own = os.times()
        return sum(fields) - fields[3] - fields[4], sum(fields), own.user + own.system

    busy_a, total_a, own_a = sample()
    time.sleep(window)
    busy_b, total_b, own_b = sample()
    cores = os.cpu_count() or 1
    if total_b == total_a:
        return 0.0
    busy = (busy_b - busy_a) / (total_b - total_a) * cores
    return max(0.0, busy - (own_b - own_a) / window)


def choose_threads(setting):
    """torch threads for a run: ``auto`` takes the cores other processes leave idle (at least one, at most
    ``OMP_NUM_THREADS`` where that is set), because torch's threads beside another busy process run several
    times slower than one thread."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) >= 1:  # e.g. a job given one core beside others
        cores = min(cores, int(limit))
    try:
        busy = _busy_cores_of_other_processes()
    except (OSError, ValueError):  # no /proc/stat: torch's default
        return torch.get_num_threads()
    return max(1, min(cores, cores - round(busy)))
