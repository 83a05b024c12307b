"""Reading a bundle archive forward, once (docs/bundle-format.md §1 and §4 step 4).

:class:`Source` holds the bundle's bytes -- a file or an in-memory buffer -- and is read strictly
forward; with ``digest=True`` every byte passes the whole-file sha256 exactly once and in file order
(the headers tarfile reads, the member data the verifier reads, and the padding both skip, read on the
way), so the digest covers exactly the bytes that were parsed: no second pass, nothing to swap between
a check and a use. The hashing, and writing files out, run on worker threads behind the reader (hashlib
and file writes release the GIL), so one pass keeps both cores busy.

Whatever ``digest`` says, every byte that is not a file's data (headers, padding, the manifest, the
signatures, the delegations document, the end-of-archive blocks and anything after them up to ``size``)
also passes a second sha256, the :meth:`Source.fingerprint`: a few KiB to hash, not a second pass. The
files' data it leaves out are pinned by the manifest it covers (size and sha256 of each file, checked
by the verifier), so a file with the fingerprint of a verified bundle holds that bundle's content and
framing byte for byte (a deflated file may only be deflated differently). That is how the agent checks
a slot's file against the bundle it verified without hashing it twice (docs/security.md §2).

:func:`walk` yields the members, each checked against the archive rules (regular files only, safe
names, no duplicates, only the names a bundle has, in the order the builder writes them, inside the
data) before anything reads it. Every reader of a bundle goes through it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import tarfile
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from edgefleet.protocol.errors import ArchiveError

MANIFEST = "manifest.json"
SIGNATURES = "signatures.json"
DELEGATIONS = "delegations.json"
FILES_DIR = "files/"
CHUNK = 1024 * 1024
"""Bytes read at a time: the reader holds two such buffers (one being filled, one still being worked on)."""
FINGERPRINT_TAG = b"edgefleet bundle fingerprint v1\n"
"""What the fingerprint hash starts with (then the file's size), so it is never another sha256 of the same bytes."""
MAX_HEADER_READ = 64 * 1024
"""Largest single read tarfile may ask for: a header block, or a pax / GNU long-name record. A crafted
extension header with a huge size is refused instead of read into memory."""
_QUEUED = 2
"""Writes handed to the writing lane that may wait at once (each at most a chunk)."""
_ORDER = f"a bundle is {MANIFEST}, {SIGNATURES}, [{DELEGATIONS}], then {FILES_DIR}... (docs/bundle-format.md §1)"


class _Lane:
    """A worker thread that runs what it is given in order; after a failure it skips the rest and
    :meth:`settle` raises that failure."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._last: Future[None] | None = None
        self._error: BaseException | None = None

    def submit(self, fn: Callable[[Any], object], arg: Any) -> Future[None]:
        self._last = self._pool.submit(self._run, fn, arg)
        return self._last

    def _run(self, fn: Callable[[Any], object], arg: Any) -> None:
        if self._error is None:
            try:
                fn(arg)
            except BaseException as exc:  # handed to the caller by settle()
                self._error = exc

    def settle(self) -> None:
        """Wait until everything given so far has run; raise the first failure."""
        if self._last is not None:
            self._last.result()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Source:
    """The bytes of one bundle, read forward; see the module docstring. ``size`` is the length to
    read (a file's size when it was opened): bytes past it are never read or hashed. What the verifier
    reads with ``payload=True`` (:meth:`chunks`) or :meth:`take` is a file's data: left out of the
    fingerprint.

    Two lanes work behind the reader, each in order and on its own thread: the whole-file sha256
    (``digest=True``) and whatever the caller hands over with :meth:`later` (writing files out). A
    buffer is refilled only once the work on what it held is done."""

    def __init__(self, fh: BinaryIO, size: int, *, digest: bool) -> None:
        self._fh = fh
        self.size = size
        self._pos = 0        # where tarfile's next read starts (it seeks)
        self._at = 0         # the file position of ``fh``
        self._seen = 0       # bytes [0, _seen) have been read (and gone into the digests)
        self._frame = hashlib.sha256(FINGERPRINT_TAG + b"%d\n" % size)
        self._sha = hashlib.sha256() if digest else None
        self._hashing = _Lane("bundle-sha256") if digest else None
        self._writing: _Lane | None = None
        self._buffers: tuple[bytearray, bytearray] | None = None   # allocated at the first read of data
        self._users: tuple[list[Future[None]], list[Future[None]]] = ([], [])
        self._queued: collections.deque[Future[None]] = collections.deque()
        self._turn = 0

    def close(self) -> None:
        """Stop the lanes (use ``contextlib.closing``)."""
        for lane in (self._hashing, self._writing):
            if lane is not None:
                lane.close()
        self._hashing = self._writing = None

    # ------------------------------------------------------------------ what tarfile uses

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < 0:
            raise ArchiveError("unsupported seek in the archive", where="bundle")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        """A header block or an extension record (tarfile's reads, always small)."""
        if n < 0 or n > MAX_HEADER_READ:
            raise ArchiveError(f"archive header record larger than {MAX_HEADER_READ} bytes", where="bundle")
        self._skip_to(self._pos)
        n = min(n, max(0, self.size - self._pos))
        self._seek_fh(self._pos)
        data = self._fh.read(n) or b""
        self._advance(memoryview(data), buffered=False, payload=False)
        return data

    # ------------------------------------------------------------------ what the verifier uses

    def chunks(self, offset: int, size: int, where: str, *, payload: bool = False) -> Iterator[memoryview]:
        """The ``size`` bytes at ``offset`` (a member's data), at most :data:`CHUNK` at a time. Each view
        is valid until the next one is asked for (or, handed to :meth:`later`, until that work ran).
        ``payload``: a file's data, checked against the manifest (left out of the fingerprint)."""
        self._skip_to(offset)
        end = offset + size
        while self._pos < end:
            view = self._fill(min(CHUNK, end - self._pos), payload=payload)
            if not view:
                raise ArchiveError("archive is truncated", where=where)
            yield view

    def take(self, offset: int, size: int, where: str) -> bytes:
        """The ``size`` bytes at ``offset`` in one piece (a file's data, for a caller that keeps them anyway)."""
        self._skip_to(offset)
        self._seek_fh(self._pos)
        data = self._fh.read(size) or b""
        while len(data) < size:   # a read can come back short; a file that ends early is truncated
            more = self._fh.read(size - len(data))
            if not more:
                self._at += len(data)
                raise ArchiveError("archive is truncated", where=where)
            data += more
        self._advance(memoryview(data), buffered=False, payload=True)
        return data

    def later(self, fn: Callable[[Any], object], data: memoryview | bytes) -> None:
        """Run ``fn(data)`` on the writing lane, after what it was given before; ``data`` is the latest
        chunk or bytes of the caller's. At most :data:`_QUEUED` of them wait: a caller making data faster
        than the lane writes it (inflating) waits instead of piling it up in memory."""
        if self._writing is None:
            self._writing = _Lane("bundle-write")
        job = self._writing.submit(fn, data)
        self._users[self._turn].append(job)
        self._queued.append(job)
        while len(self._queued) > _QUEUED:
            self._queued.popleft().result()

    def settle(self) -> None:
        """Wait for the writing lane; raise what failed there."""
        if self._writing is not None:
            self._writing.settle()

    def quiesce(self) -> None:
        """Wait for both lanes, ignoring their failures (the caller is failing already)."""
        for lane in (self._hashing, self._writing):
            if lane is not None:
                with contextlib.suppress(BaseException):
                    lane.settle()

    def digest(self) -> str:
        """Read (and hash) what is left up to ``size``; the sha256 of the whole bundle."""
        assert self._sha is not None and self._hashing is not None, "Source(digest=False) has no digest"
        self._skip_to(self.size)
        self._hashing.settle()
        return self._sha.hexdigest()

    def fingerprint(self) -> str:
        """Read what is left up to ``size``; the sha256 of every byte that was not a file's data."""
        self._skip_to(self.size)
        return self._frame.hexdigest()

    # ------------------------------------------------------------------ internals

    def _seek_fh(self, pos: int) -> None:
        if self._at != pos:
            self._fh.seek(pos)
            self._at = pos

    def _fill(self, n: int, *, payload: bool) -> memoryview:
        """Read up to ``n`` bytes at the current position into the next buffer and hash them."""
        self._seek_fh(self._pos)
        if self._buffers is None:
            self._buffers = (bytearray(min(CHUNK, self.size)), bytearray(min(CHUNK, self.size)))
        self._turn ^= 1
        users = self._users[self._turn]
        futures.wait(users)   # the lanes are done with what this buffer held
        users.clear()
        buf = memoryview(self._buffers[self._turn])[:n]
        got = 0
        while got < n:
            r = self._fh.readinto(buf[got:])  # type: ignore[attr-defined]  # files and BytesIO have it
            if not r:
                break
            got += r
        view = buf[:got]
        self._advance(view, buffered=True, payload=payload)
        return view

    def _advance(self, view: memoryview, *, buffered: bool, payload: bool) -> None:
        """``view`` was just read at ``_pos``: hash what of it is new, move on."""
        start = self._pos
        self._pos += len(view)
        self._at = self._pos
        if self._pos <= self._seen:
            return
        new = view[max(0, self._seen - start):]
        self._seen = self._pos
        if not payload:
            self._frame.update(new)
        if self._sha is not None and self._hashing is not None:
            job = self._hashing.submit(self._sha.update, new)
            if buffered:
                self._users[self._turn].append(job)

    def _skip_to(self, pos: int) -> None:
        """Move to ``pos``; bytes skipped on the way (padding) are read and hashed (they are framing)."""
        if pos > self._seen:
            self._pos, stop = self._seen, min(pos, self.size)
            while self._pos < stop:
                if not self._fill(min(CHUNK, stop - self._pos), payload=False):
                    break
        self._pos = pos


def walk(src: Source, max_files: int) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, each refused (:class:`ArchiveError`) unless it is a regular file
    with a safe name that a bundle may hold, seen once, in the builder's order, within the data. Ends
    by requiring the manifest and the signatures. The caller reads (or skips) each member's data."""
    seen: list[str] = []
    try:
        tar = tarfile.TarFile(fileobj=src, mode="r")  # type: ignore[arg-type]  # Source is file-like enough
        while (info := tar.next()) is not None:
            _check_member(info, seen, max_files, src.size)
            seen.append(info.name)
            yield info
    except (tarfile.TarError, UnicodeError, ValueError, OverflowError) as exc:
        raise ArchiveError(f"not a valid bundle archive: {exc}", where="bundle") from None
    for required in (MANIFEST, SIGNATURES):
        if required not in seen:
            raise ArchiveError(f"missing {required}", where="bundle", hint=_ORDER)


def _check_member(info: tarfile.TarInfo, seen: list[str], max_files: int, size: int) -> None:
    name = info.name
    if len(seen) >= max_files + 2:
        raise ArchiveError(f"more than {max_files} files", where="bundle")
    if not info.isreg() or info.issparse():
        raise ArchiveError(f"member {name!r} is not a regular file ({_kind(info)})", where=name)
    if name.startswith("/") or "\\" in name or any(p in {"", ".", ".."} for p in name.split("/")):
        raise ArchiveError(f"unsafe member path {name!r}", where=name)
    if name in seen:
        raise ArchiveError(f"duplicate member {name!r}", where=name)
    if name not in (MANIFEST, SIGNATURES, DELEGATIONS) and not name.startswith(FILES_DIR):
        raise ArchiveError(f"unexpected member {name!r}", where=name)
    index = len(seen)
    if index == 0 and name != MANIFEST:
        raise ArchiveError(f"missing {MANIFEST} as the first member (found {name!r})", where="bundle", hint=_ORDER)
    if index == 1 and name != SIGNATURES:
        raise ArchiveError(f"missing {SIGNATURES} as the second member (found {name!r})", where="bundle",
                           hint=_ORDER)
    if name == DELEGATIONS and index != 2:
        raise ArchiveError(f"{DELEGATIONS} is member {index + 1}, not the third", where=name, hint=_ORDER)
    if info.offset_data + info.size > size:
        raise ArchiveError("archive is truncated", where=name)


def _kind(info: tarfile.TarInfo) -> str:
    return ("symlink" if info.issym() else "hard link" if info.islnk() else "directory" if info.isdir()
            else "device" if info.ischr() or info.isblk() else "fifo" if info.isfifo()
            else "sparse file" if info.issparse() else "special")
