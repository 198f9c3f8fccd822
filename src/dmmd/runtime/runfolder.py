"""A run folder is a unit: one writer at a time, outputs checked before compute, clean stops.

- `hold(folder, command)`: an advisory lock (fcntl.flock) on FOLDER/.lock, a file naming the
  holder's pid and command. A second writer gets a one-line RunFolderError naming the holder. The
  kernel drops a flock when its process dies, so a lock file whose flock is free was left by a
  process that is gone: it is taken over with a note. The file is removed on release.
- `check_output_dir` / `check_output_file`: an output path is writable, of the right kind, its
  parent exists or can be made, its names fit the file system, before any compute starts.
- `claim_output`: files that must appear together (sample outputs) are written into a temporary
  folder beside the destination and renamed into place in one step.

Signals are dmmd.runtime.signals; what a resumed run may change is dmmd.runtime.resume.

docs/runfolder.md describes the rules for users.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"  # every temporary file or folder dmmd makes is named .<name>.<random>.tmp
TEMP_PATTERN = ".*." + "?" * 8 + TEMP_SUFFIX  # tempfile's random part is 8 characters
TEMP_MARGIN = 16  # bytes a temporary name adds to a destination's name (".", ".XXXXXXXX", ".tmp")
SAMPLE_FILES = ("samples.npz", "samples.png", "diversity.json")
STAGED = (*SAMPLE_FILES, "completions.npz", "inpaint.png", "metrics.json")  # what `sample` and `inpaint` stage


class RunFolderError(ValueError):
    """An output that cannot be written now: a folder in use, a path of the wrong kind, a full disk."""


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


# ------------------------------------------------------------------------------------ locking
def _holder(fd: int) -> str:
    """'pid N (command)' from an open lock file, or '' when it names nobody."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return ""
    return f"pid {pid}" + (f" ({' '.join(command.split())[:200]})" if command.strip() else "")


def _acquire(path: Path, command: str) -> int:
    for _ in range(100):  # retried only when a releasing holder removed the file under us
        if path.is_symlink():  # writing through it would change the file it points at
            raise RunFolderError(f"the lock file {path} is a symbolic link (to {os.readlink(path)}); remove it")
        try:  # no symlink followed, nothing but a regular file opened (a FIFO would block, then fail)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunFolderError(f"the lock file {path} is a symbolic link; remove it") from None
            raise RunFolderError(f"cannot create the lock file {path}: {err.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunFolderError(f"the lock file {path} is not a regular file (a FIFO or a device?); remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"cannot lock {path}: {err.strerror}") from None
            raise RunFolderError(f"{path.parent} is in use by {holder or 'another process'} (lock file "
                                 f"{path}); wait for it to finish or choose another folder") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or not os.path.samestat(os.fstat(fd), current):
            os.close(fd)  # we locked a file its holder had just removed: try the new one
            continue
        previous = _holder(fd)
        if previous:
            note(f"took over the lock of {path.parent} left by {previous}, which no longer runs")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        return fd
    raise RunFolderError(f"cannot lock {path}: it keeps being replaced")


@contextlib.contextmanager
def hold(folder: str | Path, command: str, lock_name: str = LOCK_NAME):
    """Hold the advisory lock of `folder` (made if missing) for the body."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if left empty
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot make the folder {folder}: {err.strerror}") from None
    path = folder / lock_name
    try:
        fd = _acquire(path, command)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiter that opened it re-checks the inode
        os.close(fd)
        _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command made, innermost first, if nothing was put in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# the command's exit stack: resources a command claims (locks, temporary folders) are released when
# it ends, however it ends (cli.main opens it)
_SCOPE: list[contextlib.ExitStack] = []


@contextlib.contextmanager
def command_scope():
    with contextlib.ExitStack() as stack:
        _SCOPE.append(stack)
        try:
            yield stack
        finally:
            _SCOPE.pop()


def enter(context):
    """Enter `context` until the current command ends (or now-and-forever outside a command)."""
    if not _SCOPE:
        return context.__enter__()
    return _SCOPE[-1].enter_context(context)


# ------------------------------------------------------------------------------ output paths
def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path, what: str) -> Path:
    """The nearest existing ancestor of `path` (a missing path), refusing dangling links and files."""
    for parent in path.absolute().parents:
        if parent.is_symlink() and not parent.exists():
            raise RunFolderError(f"{what} {path}: {parent} is a symbolic link to {os.readlink(parent)}, which "
                                 "does not exist")
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"{what} {path}: {parent} is a file, not a folder")
            return parent
    return Path("/")


def _check_names(path: Path, what: str, anchor: Path) -> None:
    limit = _name_max(anchor)
    if len(os.fsencode(path.absolute())) >= 4096:
        raise RunFolderError(f"{what} {str(path)[:60]}...: the path is longer than the file system allows (4096 bytes)")
    for i, part in enumerate(path.parts):
        room = limit - (TEMP_MARGIN if i == len(path.parts) - 1 else 0)
        if len(os.fsencode(part)) > room:
            raise RunFolderError(f"{what} {str(path)[:60]}...: the name {part[:40]}... has {len(os.fsencode(part))} "
                                 f"bytes; at most {room} fit (the file system allows {limit}, and dmmd writes "
                                 "through a temporary name)")


def _check_writable(folder: Path, what: str, path: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunFolderError(f"{what} {path}: the folder {folder} is not writable")


def check_output_dir(path: str | Path, what: str = "--out") -> None:
    """RunFolderError unless `path` is a writable folder or can be made as one (nothing is made);
    a mount point (the root of a file system: /, /proc, /dev/shm) is refused unless it holds a run."""
    path = Path(path)
    _check_names(path, what, Path(path.absolute().anchor))  # first: a stat of a too long name fails
    if path.is_symlink() and not path.exists():
        raise RunFolderError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if path.exists():
        if not path.is_dir():
            raise RunFolderError(f"{what} {path} is an existing file, not a folder")
        if os.path.ismount(os.path.realpath(path)) and not (path / "config.json").is_file():  # filled or replaced
            raise RunFolderError(f"{what} {path} is a mount point (the root of a file system); choose a folder inside it")
        _check_writable(path, what, path)
        return
    parent = _existing_ancestor(path, what)
    _check_names(path, what, parent)  # again with the file system's own limit
    _check_writable(parent, what, path)


def run_checkpoints(path: str | Path) -> Path | None:
    """The run's checkpoints/ folder (one beside a config.json or latest) that `path` is or lies in."""
    target = Path(path).absolute()
    for folder in (target, *target.parents):
        if folder.name == "checkpoints" and ((folder.parent / "config.json").is_file()
                                             or (folder.parent / "latest").is_file()):
            return folder
    return None


def check_outside_checkpoints(path: str | Path, what: str = "--out") -> None:
    """RunFolderError when `path` is or lies inside a run's checkpoints/ folder, which only training writes."""
    if run_checkpoints(Path(path).resolve()) is not None or run_checkpoints(path) is not None:
        raise RunFolderError(f"{what} {path} lies inside a run's checkpoints/ folder, which only training writes; "
                             "choose another place")


# files a command never replaces with one of its outputs: a run's own files and data a user keeps
KEPT_SUFFIXES = (".pt", ".safetensors", ".npz", ".npy", ".toml", ".jsonl")
KEPT_NAMES = ("config.json", "diversity.json", "autoencoder.json", "metrics.json", "log.txt", "latest", LOCK_NAME)


def check_output_file(path: str | Path, what: str = "--out", inputs: tuple = ()) -> None:
    """RunFolderError unless a file can be written at `path` (its folder exists and is writable) without
    replacing what must survive: an input of the command, anything inside a run's checkpoints/ folder,
    or an existing checkpoint, data, samples, config or log file (KEPT_SUFFIXES, KEPT_NAMES)."""
    path = Path(path)
    _check_names(path, what, Path(path.absolute().anchor))
    target = path.resolve()
    if any(Path(source).resolve() == target for source in inputs if source):
        raise RunFolderError(f"{what} {path} is also an input of this command; choose another file")
    check_outside_checkpoints(path, what)
    if path.exists() and (path.suffix in KEPT_SUFFIXES or path.name in KEPT_NAMES):
        raise RunFolderError(f"{what} {path} exists and holds a {path.suffix or path.name} file dmmd does not "
                             "overwrite with an output; choose another file")
    if path.is_symlink() and not path.exists():
        raise RunFolderError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if path.is_dir():
        raise RunFolderError(f"{what} {path} is an existing folder, not a file")
    if path.exists() and not path.is_file():
        raise RunFolderError(f"{what} {path} exists and is not a regular file")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise RunFolderError(f"{what} {path}: the folder {parent} does not exist")
    _check_names(path, what, parent)
    _check_writable(parent, what, path)


def remove_stale_temps(folder: str | Path,
                       subfolders: tuple[str, ...] = ("", "checkpoints", "checkpoints/stats")) -> list[Path]:
    """Remove the temporary files (.<name>.<8 random>.tmp) that writers of a run folder killed
    during a write left; call only while holding the folder's lock. Folders are left alone in the
    run folder itself (a sample writing into RUN/samples-... stages in one, under its own lock); in
    its subfolders, where no command stages, so is a staging folder a killed sample left there."""
    removed = []
    for sub in subfolders:
        base = Path(folder, sub)
        if base.is_dir():
            for stale in base.glob(TEMP_PATTERN):
                if not stale.is_dir():
                    stale.unlink(missing_ok=True)
                elif not (sub and _remove_abandoned(stale)):
                    continue
                removed.append(stale)
    return removed


def _remove_abandoned(staging: Path) -> bool:
    """Remove a staging folder of claim_output that holds only sample or inpaint outputs, unless a
    live process holds its lock (whose file goes with it); False when it stays."""
    if staging.is_symlink() or not all(p.is_file() and not p.is_symlink() and (p.name in STAGED or p.match(TEMP_PATTERN))
                                       for p in staging.iterdir()):
        return False
    try:
        with hold(staging.parent, "dmmd (removing a killed command's temporary folder)",
                  lock_name=f".{staging.name[1:-9 - len(TEMP_SUFFIX)]}.lock"):
            shutil.rmtree(staging, ignore_errors=True)
    except RunFolderError:
        return False
    return True


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of `out` left by a killed sample; call only while holding out's lock."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.{'?' * 8}{TEMP_SUFFIX}"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def current_umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def describe_os_error(err: OSError) -> str | None:
    """A one-line description of a file-system failure a user can act on, or None for others."""
    known = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
             errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "file name too long",
             errno.ENOTDIR: "not a folder", errno.EISDIR: "is a folder", errno.ELOOP: "too many symbolic links",
             errno.EMFILE: "too many open files", errno.EIO: "input/output error",
             errno.EFBIG: "the file size limit (ulimit -f) was reached"}
    if err.errno not in known:
        return None
    where = f" ({err.filename})" if err.filename else ""
    return f"{known[err.errno]}{where}; files written before are intact"


# ------------------------------------------------------------------------- outputs as a unit
def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class _Unit:
    """A temporary folder beside `out` whose files replace `out` in one rename (see claim_output)."""

    def __init__(self, out: Path, command: str, replaceable: tuple[str, ...]):
        self.out, self.command, self.replaceable = out, command, replaceable
        self.staging: Path | None = None
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Path:
        out = self.out
        with self.stack:
            lock = f".{out.name}.lock"
            self.stack.enter_context(hold(out.parent, self.command, lock_name=lock))
            _remove_stale_staging(out)
            _check_replaceable(out, self.replaceable)  # again, under the lock
            self.staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TEMP_SUFFIX, dir=out.parent))
            self.stack = self.stack.pop_all()
        return self.staging

    def __exit__(self, *exc) -> None:
        with self.stack:
            if self.staging is not None and self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)


def _check_replaceable(out: Path, replaceable: tuple[str, ...]) -> None:
    if out.is_dir():
        other = [name for name in _listing(out) if name not in replaceable]
        if other:
            shown = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
            raise RunFolderError(f"--out {out} already holds other files ({shown}); choose another --out or "
                                 "empty it (a folder of earlier " + ", ".join(replaceable) + " is replaced)")


_UNITS: dict[Path, _Unit] = {}


def claim_output(out: str | Path, command: str, replaceable: tuple[str, ...] = SAMPLE_FILES) -> Path:
    """Check `out`, lock it (a lock file beside it) and return an empty temporary folder beside it;
    `publish(staging)` then puts the folder in place of `out` in one step. Until the command ends
    (cli.main's scope) a second writer of `out` is refused; an error or a signal removes the
    temporary folder and leaves `out` as it was. An existing `out` may hold only `replaceable`
    files (an earlier output, replaced as a whole)."""
    out = Path(out)
    check_output_dir(out)
    check_outside_checkpoints(out)  # a killed command's temporary folder there would stop a resume
    if out.is_symlink():  # a link to a folder: the folder is what gets replaced
        out = out.resolve()
    _check_replaceable(out, replaceable)
    unit = _Unit(out, command, replaceable)
    staging = enter(unit)
    _UNITS[staging] = unit
    return staging


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rename = libc.renameat2
    except (OSError, AttributeError):
        return False
    rename.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(staging: Path) -> Path:
    """Put the staging folder of claim_output in place of its `out`; returns `out`."""
    unit = _UNITS.pop(staging)
    out = unit.out
    _check_replaceable(out, unit.replaceable)  # nothing else appeared there meanwhile
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp made it 0700
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(staging, out)  # a missing or empty folder is replaced in one rename
    elif _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the earlier output
    else:  # no atomic exchange here: move the earlier output aside first
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TEMP_SUFFIX, dir=out.parent))
        os.replace(out, aside / "old")
        os.replace(staging, out)
        shutil.rmtree(aside, ignore_errors=True)
    return out
