"""A typed wrapper of ``qemu-img`` for offline disk work, through an injected Runner.

Offline only: ``qemu-img`` must never touch an image a running QEMU has open
(QEMU's lock makes writes fail with ``Failed to get "write" lock``; Xen's qdisk
does not lock, and a snapshot taken under it is silently lost). Read-only looks
at an image in use need ``force_share`` (``-U``).

Every call names the image format (``-f``; qcow2 unless told otherwise) so that
qemu-img never probes it (a raw image whose guest wrote a qcow2 header must never
be taken for one): callers pass the format domsnap knows for the image (the domain
config's, the record's, or the one an overlay's header names for its backing file),
and every overlay is created with its backing format explicit (``-F``).
``qemu-img snapshot`` has no ``-f`` in 7.2 ("unrecognized option"): it gets
``--image-opts driver=qcow2,file.driver=file,file.filename=PATH`` instead, which
fails with "Image is not in qcow2 format" on anything else.

Every answer is read from ``--output=json``, never from the human-readable
tables. Failures are :class:`~domsnap.errors.CommandFailed` from the runner
(argv, exit code, stderr); :meth:`QemuImg.create` refuses
(:class:`~domsnap.errors.Refused`) to replace an existing file. Methods are thin:
``rebase(path, None)`` of an image that is already standalone fails ("Image does
not have a backing file"), as qemu-img does.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from domsnap.errors import BackendError, CommandFailed, InvalidInput, Refused
from workers.hostio.runner import Runner

__all__ = ["QemuImg", "StrPath"]

StrPath = str | os.PathLike[str]

QCOW2 = "qcow2"


def _path_arg(path: StrPath) -> str:
    """A path as a positional argument: one starting with ``-`` must not read as an option."""
    text = os.fspath(path)
    if not text:
        raise InvalidInput("empty image path", field="path")
    return f"./{text}" if text.startswith("-") else text


def _image_opts(path: StrPath, fmt: str = QCOW2) -> str:
    """An ``--image-opts`` spec naming the format: for subcommands that have no ``-f``."""
    text = _path_arg(path).replace(",", ",,")
    return f"driver={fmt},file.driver=file,file.filename={text}"


class QemuImg:
    """``qemu-img`` subcommands as typed methods."""

    def __init__(self, runner: Runner, *, binary: str = "qemu-img", timeout: float = 600.0) -> None:
        self._runner = runner
        self.binary = binary
        self.timeout = timeout

    def _run(self, *args: str) -> str:
        return self._runner([self.binary, *args], timeout=self.timeout).stdout

    # -- inspection ------------------------------------------------------------

    def info(
        self,
        path: StrPath,
        *,
        backing_chain: bool = False,
        force_share: bool = False,
        fmt: str | None = QCOW2,
    ) -> Any:
        """``info --output=json``: a dict, or a list of dicts (top first) with ``backing_chain``.

        ``fmt=None`` lets qemu-img probe the format (only for images of unknown origin).
        """
        args = ["info", "--output=json"]
        if fmt is not None:
            args += ["-f", fmt]
        if backing_chain:
            args.append("--backing-chain")
        if force_share:
            args.append("-U")
        argv_tail = [*args, _path_arg(path)]
        out = self._run(*argv_tail)
        try:
            return json.loads(out)
        except ValueError:
            raise CommandFailed(
                [self.binary, *argv_tail], 0, f"qemu-img info printed no valid JSON: {out[:200]!r}"
            ) from None

    def snapshot_list(self, path: StrPath, *, force_share: bool = False) -> list[str]:
        """Names of the internal snapshots of a qcow2 image, oldest first."""
        data = self.info(path, force_share=force_share)
        return [str(s["name"]) for s in data.get("snapshots", [])]

    def backing(self, path: StrPath, *, fmt: str = QCOW2,
                force_share: bool = False) -> tuple[str | None, str | None]:
        """``(backing file, backing format)`` of the image ``path`` opened as ``fmt``:
        the file's absolute path (None for a standalone image) and the format its header
        names for it (None when the header names none: QEMU would probe it)."""
        data = self.info(path, force_share=force_share, fmt=fmt)
        full = data.get("full-backing-filename")
        name = data.get("backing-filename")
        if full:
            backing = str(full)
        elif name:
            backing = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)),
                                                    str(name)))
        else:
            return None, None
        bfmt = data.get("backing-filename-format")
        return backing, str(bfmt) if bfmt else None

    def backing_file(self, path: StrPath, *, fmt: str = QCOW2,
                     force_share: bool = False) -> str | None:
        """The absolute path of the image's backing file, or None for a standalone image."""
        return self.backing(path, fmt=fmt, force_share=force_share)[0]

    # -- creation --------------------------------------------------------------

    def create(
        self,
        path: StrPath,
        *,
        size_bytes: int | None = None,
        fmt: str = QCOW2,
        backing: str | None = None,
        backing_fmt: str = QCOW2,
    ) -> None:
        """Create an image (an overlay of ``backing`` if given); never replaces a file.

        The file is claimed with ``O_EXCL`` before qemu-img runs, so a concurrent
        creator cannot be overwritten either; on failure the claim is removed.
        Without ``size_bytes`` an overlay takes its backing file's size.
        """
        if size_bytes is None and backing is None:
            raise InvalidInput("an image without a backing file needs a size", field="size_bytes")
        if size_bytes is not None and size_bytes <= 0:
            raise InvalidInput(f"size must be positive, not {size_bytes}", field="size_bytes")
        target = _path_arg(path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise Refused(
                f"refusing to create image {os.fspath(path)}: the file already exists",
                path=os.fspath(path),
            ) from None
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidInput(
                f"cannot create image {os.fspath(path)}: its directory does not exist",
                field="path",
            ) from None
        except OSError as exc:
            raise BackendError(
                f"cannot create image {os.fspath(path)}: {exc.strerror}", path=os.fspath(path)
            ) from None
        os.close(fd)
        args = ["create", "-q", "-f", fmt]
        if backing is not None:
            args += ["-b", backing, "-F", backing_fmt]
        args.append(target)
        if size_bytes is not None:
            args.append(str(size_bytes))
        try:
            self._run(*args)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            raise

    def copy_out_snapshot(self, path: StrPath, name: str, target: StrPath) -> None:
        """Write internal snapshot ``name`` of ``path`` into a new standalone qcow2 image
        (``convert -l snapshot.name=NAME``): a snapshot that lives in an image which is
        now a backing file can be reverted to without touching that image."""
        dst = _path_arg(target)
        if os.path.lexists(dst):
            raise Refused(f"image {os.fspath(target)} exists already; not overwriting it",
                          path=os.fspath(target))
        try:
            self._run("convert", "-q", "-U", "-f", QCOW2, "-O", QCOW2, "-l",
                      f"snapshot.name={name}", _path_arg(path), dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            raise

    # -- internal snapshots (qcow2) --------------------------------------------

    def _snapshot(self, flag: str, path: StrPath, name: str) -> None:
        if not name:
            raise InvalidInput("empty snapshot name", field="name")
        self._run("snapshot", "-q", "--image-opts", flag, name, _image_opts(path))

    def snapshot_create(self, path: StrPath, name: str) -> None:
        """Take internal snapshot ``name`` (``snapshot -c``)."""
        self._snapshot("-c", path, name)

    def snapshot_apply(self, path: StrPath, name: str) -> None:
        """Revert the image to internal snapshot ``name`` (``snapshot -a``)."""
        self._snapshot("-a", path, name)

    def snapshot_delete(self, path: StrPath, name: str) -> None:
        """Delete internal snapshot ``name`` (``snapshot -d``)."""
        self._snapshot("-d", path, name)

    # -- chains ----------------------------------------------------------------

    def commit(self, path: StrPath) -> None:
        """Write an overlay's data into its backing file (the overlay stays, now redundant)."""
        self._run("commit", "-q", "-f", QCOW2, _path_arg(path))

    def rebase(
        self,
        path: StrPath,
        backing: str | None,
        *,
        backing_fmt: str = QCOW2,
        unsafe: bool = False,
    ) -> None:
        """Point an overlay at another backing file; ``None`` makes it standalone.

        Safe mode (the default) copies whatever differs so the guest-visible data
        stays the same; ``unsafe`` only rewrites the header (for when the new
        backing file holds the same data, e.g. it was moved or renamed).
        """
        args = ["rebase", "-q", "-f", QCOW2]
        if unsafe:
            args.append("-u")
        if backing is None:
            args += ["-b", ""]
        else:
            args += ["-b", backing, "-F", backing_fmt]
        args.append(_path_arg(path))
        self._run(*args)
