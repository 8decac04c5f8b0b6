"""One rule for every file path that comes from an untrusted source (a node's widget, a pose file).

A ComfyUI server may be reachable by others, so a path typed into a node is untrusted:

* **Reading** (:func:`resolve_input_file`, :func:`open_regular_file`, :func:`read_input_file`):
  the path is accepted only inside the folders that input belongs to (``roots``: ComfyUI's
  input folder for pose files, the pack's model folders for model files), both as written
  (no ``..`` or absolute path leading out) and after resolving symbolic links (``realpath``); it
  is opened component by component from the root without following symbolic links
  (``O_NOFOLLOW``), without blocking (``O_NONBLOCK``: a FIFO cannot freeze the server), must be
  a regular file (no FIFO, device, socket or folder) and at most ``max_bytes`` long.
* **Writing** (:func:`make_write_dir`, :func:`check_write_file`): a folder the pack writes into
  is created inside its root, and neither it nor any folder between the root and it may be a
  symbolic link, so a link planted in the output folder cannot redirect writes elsewhere.

Error messages (:class:`PathRefused`, a ``ValueError``) name the input and the folders it must
be in; they never show file contents, and a path outside the folders gets the same answer
whether or not it exists (existence is only reported inside the allowed folders).

This module is ComfyUI-free: nodes pass ComfyUI's folders in (``folder_paths``). Limits live in
:mod:`sesahand.limits`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["PathRefused", "resolve_input_file", "open_regular_file", "read_input_file",
           "make_write_dir", "check_write_file", "is_inside"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_DIRECTORY", 0) \
    | getattr(os, "O_CLOEXEC", 0)


class PathRefused(ValueError):
    """A path given to the pack is outside its folders, not a regular file, too large or
    unreadable; the message names the input (never the file's contents)."""


def _shown(value: str, limit: int = 120) -> str:
    """The value as the user typed it, quoted and cut short (a message never grows unbounded)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is ``root`` or below it (both absolute; compared as written)."""
    path, root = os.fspath(path), os.fspath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives, or a mix of absolute and relative paths
        return False


def _roots(roots: Iterable[str | os.PathLike]) -> list[tuple[str, str]]:
    """(as given, normalised absolute; realpath) of each root, in order, duplicates dropped."""
    seen, result = set(), []
    for root in roots:
        if root is None or not os.fspath(root):
            continue
        given = os.path.normpath(os.path.abspath(os.fspath(root)))
        real = os.path.realpath(given)
        if (given, real) not in seen:
            seen.add((given, real))
            result.append((given, real))
    return result


def _folders_text(roots: list[tuple[str, str]]) -> str:
    return ", ".join(given for given, _ in roots) or "(no folder configured)"


def _check_text(value, what: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise PathRefused(f"{what}: expected a file name, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise PathRefused(f"{what} is empty; give the name of a file")
    if "\0" in text:
        raise PathRefused(f"{what}: the file name contains a NUL character; give a plain file name")
    return text


def _locate(text: str, roots: list[tuple[str, str]], what: str) -> tuple[str, str]:
    """(real root, path relative to it) of ``text``: the first root that holds it as written
    and after resolving links; for a relative name the first root where it exists."""
    outside = PathRefused(f"{what} {_shown(text)} is not a file inside the allowed folders "
                          f"({_folders_text(roots)}); give a file name relative to one of them")
    if not roots:
        raise outside
    expanded = os.path.expanduser(text) if text.startswith("~") else text
    if os.path.isabs(expanded):
        candidates = [os.path.normpath(expanded)]
    else:
        candidates = [os.path.normpath(os.path.join(given, expanded)) for given, _ in roots]
    first_inside = None
    for candidate in candidates:
        for given, real in roots:
            # As written first (so a path outside is refused before anything outside is
            # looked at), then after resolving links.
            if not (is_inside(candidate, given) or is_inside(candidate, real)):
                continue
            resolved = os.path.realpath(candidate)
            if not is_inside(resolved, real) or resolved == real:
                continue
            found = (real, os.path.relpath(resolved, real))
            if os.path.lexists(resolved):
                return found
            first_inside = first_inside or found
    if first_inside is None:
        raise outside
    return first_inside


def _open_below(real_root: str, relative: str, text: str, what: str, max_bytes: int) -> int:
    """Open ``real_root/relative`` read-only, one component at a time, never following a link;
    returns the descriptor of a regular file of at most ``max_bytes`` bytes."""
    parts = [p for p in relative.split(os.sep) if p not in ("", ".")]
    fd = os.open(real_root, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                child = os.open(part, _OPEN_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise PathRefused(f"{what} {_shown(text)}: no such file in {real_root}; check the "
                                      "name (files go in that folder)") from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise PathRefused(f"{what} {_shown(text)}: a symbolic link or a file stands where "
                                      f"a folder or file inside {real_root} was expected; give the "
                                      "real file") from None
                raise PathRefused(f"{what} {_shown(text)}: cannot open it ({exc.strerror})") from None
            os.close(fd)
            fd = child
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused(f"{what} {_shown(text)} is not a regular file (a folder, FIFO, device "
                              "or socket); give a file")
        if info.st_size > max_bytes:
            raise PathRefused(f"{what} {_shown(text)} is {info.st_size} bytes, more than the limit of "
                              f"{max_bytes} bytes (sesahand.limits)")
        os.set_blocking(fd, True)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def open_regular_file(value: str | os.PathLike, roots: Iterable[str | os.PathLike], *, what: str,
                      max_bytes: int):
    """Open an untrusted file path for reading, by the rule of this module.

    Args:
        value: the path as given: relative to a root (looked up in ``roots`` in order), or
            absolute (accepted only when inside one of them).
        roots: the folders this input may come from (e.g. ComfyUI's input folder).
        what: the input's name for messages (``"pose_json"``, ``"task_file"``).
        max_bytes: size limit in bytes (from :mod:`sesahand.limits`).

    Returns: a binary file object (``io.BufferedReader``) of the regular file; close it.

    Raises:
        PathRefused: outside the folders (also through a link), missing inside them, not a
            regular file, larger than ``max_bytes``, or unreadable.
    """
    text = _check_text(value, what)
    real_root, relative = _locate(text, _roots(roots), what)
    fd = _open_below(real_root, relative, text, what, max_bytes)
    return os.fdopen(fd, "rb")


def resolve_input_file(value: str | os.PathLike, roots: Iterable[str | os.PathLike], *, what: str,
                       max_bytes: int) -> Path:
    """The real path of an untrusted file path, checked by the rule of this module (the file
    is opened and checked, then closed). For code that must hand a path to another library
    (MediaPipe); read through :func:`open_regular_file` where you can.

    Arguments and errors: see :func:`open_regular_file`.
    """
    text = _check_text(value, what)
    real_root, relative = _locate(text, _roots(roots), what)
    os.close(_open_below(real_root, relative, text, what, max_bytes))
    return Path(real_root, relative)


def read_input_file(value: str | os.PathLike, roots: Iterable[str | os.PathLike], *, what: str,
                    max_bytes: int) -> bytes:
    """The bytes of an untrusted file path (see :func:`open_regular_file`); at most
    ``max_bytes`` are read even if the file grows meanwhile."""
    with open_regular_file(value, roots, what=what, max_bytes=max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PathRefused(f"{what} {_shown(str(value).strip())} grew past the limit of {max_bytes} bytes "
                          "while being read")
    return data


def make_write_dir(path: str | os.PathLike, *, inside: str | os.PathLike, what: str) -> Path:
    """Create (if needed) the folder ``path`` inside ``inside`` for writing, refusing links.

    Every folder from ``inside`` (exclusive) down to ``path`` is created when missing and must
    be a real folder, not a symbolic link (also not one pointing back inside), so nothing
    written below ``path`` can land outside ``inside``. ``inside`` itself may be a link (the
    administrator's choice, e.g. ComfyUI's output folder on another disk).

    Args:
        path: the folder to write into, absolute or relative to ``inside``.
        inside: the root it must stay in.
        what: the input's name for messages (``"dataset"``).

    Returns: the folder as ``inside``'s real path joined with the relative part.

    Raises:
        PathRefused: ``path`` is not below ``inside`` as written (``..``, absolute elsewhere),
            or a folder on the way is a link or a file.
        OSError: a folder cannot be created (permissions, full disk).
    """
    root_given = os.path.normpath(os.path.abspath(os.fspath(inside)))
    root_real = os.path.realpath(root_given)
    text = os.fspath(path)
    if "\0" in text:
        raise PathRefused(f"{what}: the name contains a NUL character; give a plain folder name")
    target = os.path.normpath(text if os.path.isabs(text) else os.path.join(root_given, text))
    if is_inside(target, root_given):
        relative = os.path.relpath(target, root_given)
    elif is_inside(target, root_real):
        relative = os.path.relpath(target, root_real)
    else:
        raise PathRefused(f"{what} {_shown(text)} is not inside {root_given}; give a folder name "
                          "inside it")
    os.makedirs(root_real, exist_ok=True)
    current = root_real
    for part in [p for p in relative.split(os.sep) if p not in ("", ".")]:
        if part == "..":
            raise PathRefused(f"{what} {_shown(text)} contains '..'; give a folder name inside {root_given}")
        current = os.path.join(current, part)
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise PathRefused(f"{what}: {current} is a symbolic link; the pack writes only into real "
                              f"folders inside {root_given} (replace the link with a folder)")
        if not stat.S_ISDIR(info.st_mode):
            raise PathRefused(f"{what}: {current} is not a folder; move that file away or choose "
                              "another name")
    return Path(current)


def check_write_file(path: str | os.PathLike, *, what: str) -> Path:
    """Refuse to write into ``path`` when it exists as anything but a regular file (a symbolic
    link, FIFO, device or folder): appending or locking through a planted link would change a
    file elsewhere. Returns ``path``. Raises :class:`PathRefused`."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(info.st_mode):
        raise PathRefused(f"{what}: {path} is a symbolic link or not a regular file; the pack writes "
                          "only regular files (remove it)")
    return path
