"""Atomic file output: a reader never sees a half-written file, a failure leaves nothing behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

from medsam2.errors import InputError


def _create_beside(path: Path, create: Callable[[Path], None], infix: str = "", suffix: str = "") -> Path:
    """A new hidden name beside `path`, made by `create` (which fails on an existing one). Not
    tempfile's mkstemp/mkdtemp: they make everything private (0600/0700), where an output must get
    the permissions the user's umask gives any new file, as it would if written directly."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            candidate = path.parent / f".{path.name}.{infix}{secrets.token_hex(4)}{suffix}"
            try:
                create(candidate)
            except FileExistsError:
                continue
            return candidate
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror})") from None
    raise InputError(f"{path}: cannot write (no free temporary name beside it)")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _new_folder(path: Path) -> None:
    path.mkdir(0o777)


def _written_through(path: Path) -> bool:
    """Whether `path` names something other than a file or a folder (a device or a pipe, such as
    /dev/stdout or /dev/null): that is written to where it is, not replaced by a new file."""
    return path.exists() and not path.is_file() and not path.is_dir()


def _stream_descriptor(path: Path) -> int | None:
    """The open file descriptor `path` names (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N),
    else None. Redirected to a file, such a path leads to that file: opening it anew would truncate
    the file (`>> log` would lose the log) and renaming over it would unlink it, so it is written
    through the descriptor, which keeps the shell's append mode and position."""
    match = re.fullmatch(r"/dev/(stdout|stderr)|/(?:dev/fd|proc/self/fd)/(\d+)", str(path))
    if match is None:
        return None
    return {"stdout": 1, "stderr": 2}[match.group(1)] if match.group(1) else int(match.group(2))


def _write_to_descriptor(descriptor: int, written: Path) -> None:
    sys.stdout.flush()  # what was printed before comes first
    sys.stderr.flush()
    with os.fdopen(os.dup(descriptor), "wb") as stream:
        stream.write(written.read_bytes())


def _link_target(path: Path) -> Path:
    """The path a symbolic link names, so that outputs replace the file and keep the link."""
    return path.resolve() if path.is_symlink() else path


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffixes) to write to; rename it over `path` on
    success, delete it on any error. A symbolic link keeps pointing at the file it names, which is
    replaced; a device or pipe is written to directly."""
    path = Path(path)
    if _stream_descriptor(path) is not None:  # staged elsewhere, then written through the descriptor
        with outputs_together([path]) as (staged,):
            yield staged  # type: ignore[misc]
        return
    if _written_through(path):
        yield path
        return
    with _staged_file(_link_target(path), new=False) as temporary:
        yield temporary


@contextlib.contextmanager
def atomic_new_path(path: Path) -> Iterator[Path]:
    """`atomic_path` for a file that must not be there yet: what is written is linked in under
    `path`, never over a file. `FileExistsError` when one is there, even one another writer put
    there since the caller looked (two requests saving at once: the first one wins, the other learns it)."""
    with _staged_file(path, new=True) as temporary:
        yield temporary


@contextlib.contextmanager
def _staged_file(path: Path, new: bool) -> Iterator[Path]:
    """A temporary file beside `path` (same suffixes) to write to, put in place on success (renamed
    over `path`, or when `new` linked in where no file is) and deleted in any case; an OSError (a
    full disk, a file-size limit...) as a one-line InputError, but for `new` the FileExistsError
    that says `path` was taken."""
    temporary = _create_beside(path, _new_file, suffix="".join(path.suffixes) or ".tmp")
    try:
        yield temporary
        (os.link if new else os.replace)(temporary, path)
    except OSError as error:
        if new and isinstance(error, FileExistsError):
            raise
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield an empty hidden folder beside `path` to fill; on success it replaces `path` (an existing
    folder there is moved aside, then removed), on any error it is deleted. A symbolic link keeps
    pointing at the folder it names."""
    path = _link_target(Path(path))
    staging = _create_beside(path, _new_folder)
    try:
        try:
            yield staging
        except OSError as error:  # a full disk, a file-size limit...: named as the file in the folder
            where = str(error.filename).replace(str(staging), str(path)) if error.filename else str(path)
            raise InputError(f"{where}: cannot write ({error.strerror or error})") from None
        _move_into_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _as_named(text: str, named: dict[str, str]) -> str:
    """`text` with any path inside a staging folder as the path the user gave for that output, or, for
    another file staged with it (the area plot beside `--areas` table, a .mhd's data file), as that
    file's path beside the output."""

    def as_given(match: re.Match, staging: str, given: str) -> str:
        inside = match.group(1).lstrip("/")
        if not inside or inside == Path(staging).name[1:].rsplit(".", 1)[0]:  # the output itself
            return given
        return str(Path(given).parent / inside)

    for staging, given in named.items():
        text = re.sub(re.escape(staging) + r"([^\s:'\"]*)", partial(as_given, staging=staging, given=given), text)
    return text


def _move_into_place(written: Path, path: Path) -> None:
    """Rename `written` (a file, or a folder) over `path`; what a folder replaces is moved aside first."""
    if not (written.is_dir() and path.exists()):
        os.replace(written, path)
        return
    previous = _create_beside(path, _new_folder, infix="old.")
    os.replace(path, previous / path.name)
    os.replace(written, path)
    shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def outputs_together(paths: Sequence[Path | str | None]) -> Iterator[list[Path | None]]:
    """Yield where to write each of `paths` (None stays None) so that they land together: each in a
    hidden folder beside its path, under its own name, so that a header naming its data file (.mhd,
    .nhdr) stays right. Once the body has written them all they move into place (the file at each
    path after the data files beside it); on any error none does and the folders are deleted, so a
    failed overlay never leaves its mask behind. Devices and pipes are written to where they are."""
    stagings: dict[Path, Path] = {}  # final path -> its staging folder
    named: dict[str, str] = {}  # staging folder -> the path as given, for error messages
    made: list[Path] = []  # folders made for the outputs, removed again if nothing lands
    streams: list[tuple[int, Path]] = []  # (descriptor, where its output is staged)
    landed = False
    try:
        staged: list[Path | None] = []
        for target in (None if path is None else Path(path) for path in paths):
            descriptor = None if target is None else _stream_descriptor(target)
            if descriptor is not None:
                streams.append((descriptor, Path(tempfile.mkdtemp(prefix="medsam2-")) / target.name))
                staged.append(streams[-1][1])
                continue
            if target is None or _written_through(target):
                staged.append(target)
                continue
            final = _link_target(target)
            made += [folder for folder in _missing_folders(final.parent) if folder not in made]
            stagings[final] = _create_beside(final, _new_folder)
            staged.append(stagings[final] / final.name)
            named[str(stagings[final])] = str(target)
        try:
            yield staged
        except InputError as error:  # a writer's message names the file the user named
            raise InputError(_as_named(str(error), named)) from None
        except OSError as error:  # a full disk, a file-size limit...
            where = _as_named(str(error.filename), named) if error.filename else ", ".join(named.values())
            raise InputError(f"{where}: cannot write ({error.strerror or error})") from None
        moves = [
            (written, final.parent / written.name)
            for final, staging in stagings.items()
            for written in sorted(staging.iterdir(), key=lambda entry: entry.name == final.name)
        ]
        for written, path in moves:  # checked for all before any lands
            if not written.is_dir() and path.is_dir():
                raise _folder_in_the_way(path)
        for written, path in moves:
            _move_into_place(written, path)
        for descriptor, written in streams:
            _write_to_descriptor(descriptor, written)
        landed = True
    finally:
        for staging in [*stagings.values(), *(written.parent for _, written in streams)]:
            shutil.rmtree(staging, ignore_errors=True)
        if not landed:
            for folder in reversed(made):  # deepest first; only while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _folder_in_the_way(path: Path) -> InputError:
    return InputError(f"{path}: a folder is there, and this output is a file; remove the folder or name another file")


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def disk_full(folder: Path | str) -> bool:
    """Whether the file system holding `folder` is (all but) full: for a library that reports a failed
    write as its own error (torch.save's RuntimeError, ITK's header that is silently cut short) and
    not as the OSError that says why."""
    try:
        free = os.statvfs(folder)
    except OSError:
        return False
    return free.f_bavail * free.f_frsize < 1024 * 1024


def write_failure(file: Path | str, reason: str) -> OSError:
    """The OSError (naming `file`) for a library's failed write of `file`: ENOSPC on a full disk,
    else `reason`."""
    if disk_full(Path(file).parent):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    return OSError(errno.EIO, reason, str(file))


def make_output_folder(path: Path) -> Path:
    """Create `path` (with its parents) for outputs; a one-line `InputError` where it cannot be."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: cannot use as the output folder (a file is there)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{path}: cannot use as the output folder ({error.strerror})") from None
    return path


def check_output_paths(
    inputs: Sequence[Path | str | None], outputs: Sequence[Path | str | None], folders: Sequence[Path | str] = ()
) -> None:
    """Refuse, before any work, outputs that would replace an input (or, as a folder, hold one; or,
    in an input folder, join its images) or each other, a file output where a folder is (only `folders` are written as folders), and outputs
    in a place that cannot be written: a one-line `InputError`."""
    sources = [Path(path).resolve() for path in inputs if path is not None]
    folder_outputs = {Path(folder).resolve() for folder in folders}
    seen: dict[Path, Path] = {}
    for path in (Path(output) for output in outputs if output is not None):
        resolved = path.resolve()
        if resolved.is_dir() and resolved not in folder_outputs:
            raise _folder_in_the_way(path)
        for source in sources:
            if source == resolved or source.is_relative_to(resolved):
                raise InputError(f"{path}: writing there would replace the input {source}; choose another output")
            if resolved.parent == source:  # a SEG among a series' files replaced a slice, or joined the series; a picture, the frames
                raise InputError(f"{path}: in the input folder {source}, among the images it holds (a series' files, a video's frames); choose another place")
        if resolved in seen:
            raise InputError(f"{path}: named for two outputs (also as {seen[resolved]})")
        seen[resolved] = path
        if _written_through(path):
            continue
        place = resolved.parent
        while not place.exists():
            place = place.parent
        if not place.is_dir():
            raise InputError(f"{path}: cannot write ({place} is a file, not a folder)")
        if not os.access(place, os.W_OK | os.X_OK):
            raise InputError(f"{path}: cannot write (no permission to write in {place})")
        _probe(place, path)


def _probe(place: Path, output: Path) -> None:
    """Create and remove a file in `place`: what permission bits cannot tell (a read-only or
    virtual file system such as /proc, a full disk's inode table) shows now, not after the work."""
    probe = place / f".medsam2-probe-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        raise InputError(f"{output}: cannot write in {place} ({error.strerror})") from None
