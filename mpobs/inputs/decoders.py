"""Compressed inputs: recognised by their magic bytes, decoded the way zcat, bzcat, xzcat and zstdcat do.

A decoder takes the input's bytes as they come (``decode``) and gives back what they
decode to; ``finish`` is called at the end of the input. Every format may hold several
streams one after another (concatenated gzip members, pbzip2's bzip2 streams, xz
streams, zstd frames): each is decoded in turn, as the command-line tools do.

Damage never raises: the decoder keeps what it decoded before it (returned by the
call that found it) and sets ``damage`` to a message; the reader then stops. gzip is
inflated raw and its CRC and length checked here, so a checksum error comes after
all of the member's data, as zcat writes it; zlib itself would drop the last call's
output with the error. Input is fed in ``FEED`` pieces, so damage found inside a
format's data loses at most what one piece decodes to.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from typing import Any

#: Bytes of input given to a decompressor at a time.
FEED = 64 << 10

MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
#: Bytes ``sniff`` needs to tell every format.
SNIFF_BYTES = 6


def sniff(head: bytes) -> str | None:
    """The compression format ``head`` (the input's first bytes) starts with, or None for plain text."""
    for magic, name in MAGICS:
        if head.startswith(magic):
            if name == "bzip2" and (len(head) < 4 or head[3] not in b"123456789"):
                continue
            return name
    return None


class Decoder:
    """Base: ``decode`` pieces of input, then ``finish``; ``damage`` says what went wrong, if anything."""

    name = "?"

    def __init__(self) -> None:
        self.damage: str | None = None
        self.consumed = 0  # input bytes taken so far

    def decode(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for at in range(0, len(data), FEED):
            if self.damage is not None:
                break
            piece = data[at : at + FEED]
            out.append(self._decode(piece))
            self.consumed += len(piece)
        return b"".join(out)

    def finish(self) -> None:
        """The input ended; a stream cut short is damage."""

    def _decode(self, piece: bytes) -> bytes:
        raise NotImplementedError

    def _damaged(self, what: str) -> bytes:
        if self.damage is None:
            self.damage = what
        return b""


class GzipDecoder(Decoder):
    """gzip members (RFC 1952), one after another; zero bytes after the last are ignored, as gzip does."""

    name = "gzip"

    def __init__(self) -> None:
        super().__init__()
        self._state = "header"  # header -> data -> trailer -> header ...
        self._held = b""  # a header or trailer still being gathered
        self._inflate: Any = None
        self._crc = self._size = 0
        self.members = 0

    def _decode(self, piece: bytes) -> bytes:
        out: list[bytes] = []
        data = piece
        try:
            while data and self.damage is None:
                if self._state == "data":
                    got = self._inflate.decompress(data)
                    out.append(got)
                    self._crc, self._size = zlib.crc32(got, self._crc), self._size + len(got)
                    if not self._inflate.eof:
                        break
                    data, self._state = self._inflate.unused_data, "trailer"
                elif self._state == "trailer":
                    data = self._trailer(data)
                else:
                    data = self._header(data)
        except zlib.error as err:
            self._damaged(f"is invalid in member {self.members} ({err})")
        return b"".join(out)

    def _trailer(self, data: bytes) -> bytes:
        held = self._held + data
        if len(held) < 8:
            self._held = held
            return b""
        crc, size = struct.unpack("<II", held[:8])
        self._held = b""
        if crc != self._crc or size != self._size & 0xFFFFFFFF:
            self._damaged(f"fails the CRC/length check of member {self.members}")
            return b""
        self._state = "header"
        return held[8:]

    def _header(self, data: bytes) -> bytes:
        held = self._held + data
        if self.members and not held.strip(b"\x00"):
            self._held = b""  # padding after the last member
            return b""
        start = self._header_end(held)
        if start is None:
            self._held = held  # not a whole header yet (or damage, set by _header_end)
            return b""
        self._held, self._state = b"", "data"
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._crc = self._size = 0
        self.members += 1
        return held[start:]

    def _header_end(self, h: bytes) -> int | None:
        """Where the member's deflate data starts in ``h``, or None when ``h`` is not a whole header yet."""
        if h[:2] != b"\x1f\x8b"[: len(h)]:
            self._damaged("has trailing garbage after the last member" if self.members else "has no gzip header")
            return None
        if len(h) < 10:
            return None
        if h[2] != 8:
            self._damaged(f"uses an unknown compression method ({h[2]})")
            return None
        flags, at = h[3], 10
        if flags & 4:  # FEXTRA
            if len(h) < at + 2:
                return None
            at += 2 + struct.unpack("<H", h[at : at + 2])[0]
        for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
            if flags & bit:
                end = h.find(b"\x00", at)
                if end == -1:
                    return None
                at = end + 1
        if flags & 2:  # FHCRC
            at += 2
        return at if len(h) >= at else None

    def finish(self) -> None:
        if self.damage is None and (self._state != "header" or self._held.strip(b"\x00")):
            self._damaged("ends too soon (truncated)")


class _StreamsDecoder(Decoder):
    """Formats whose Python decompressor stops at the end of a stream: start a new one on what follows."""

    errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._d: Any = None
        self._fed = False  # the current stream has had input

    def _new(self) -> Any:
        raise NotImplementedError

    def _decode(self, piece: bytes) -> bytes:
        out: list[bytes] = []
        data = piece
        try:
            while data:
                if self._d is None:
                    data = self._skip_padding(data)
                    if not data:
                        break
                    self._d, self._fed = self._new(), False
                self._fed = True
                out.append(self._d.decompress(data))
                if not self._d.eof:
                    break
                data, self._d = self._d.unused_data, None
        except self.errors as err:
            self._damaged(f"is invalid ({err})")
        return b"".join(out)

    def _skip_padding(self, data: bytes) -> bytes:
        return data

    def finish(self) -> None:
        if self.damage is None and self._d is not None and self._fed:
            self._damaged("ends too soon (truncated)")


class Bzip2Decoder(_StreamsDecoder):
    name = "bzip2"
    errors = (OSError, ValueError, EOFError)

    def _new(self) -> Any:
        return bz2.BZ2Decompressor()


class XzDecoder(_StreamsDecoder):
    name = "xz"
    errors = (lzma.LZMAError, EOFError)

    def _new(self) -> Any:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def _skip_padding(self, data: bytes) -> bytes:
        return data.lstrip(b"\x00")  # stream padding (xz allows zero bytes between streams)


class ZstdDecoder(_StreamsDecoder):
    name = "zstd"

    def __init__(self) -> None:
        import zstandard  # only for .zst inputs

        super().__init__()
        self.errors = (zstandard.ZstdError,)
        self._dctx = zstandard.ZstdDecompressor()

    def _new(self) -> Any:
        return self._dctx.decompressobj()


DECODERS: dict[str, Callable[[], Decoder]] = {
    "gzip": GzipDecoder,
    "bzip2": Bzip2Decoder,
    "xz": XzDecoder,
    "zstd": ZstdDecoder,
}


def decoder_for(name: str) -> Decoder:
    return DECODERS[name]()
