"""Text files decoded with clear errors: the line and byte of an undecodable character, or what a
binary file given as text is (an image, a workbook, random bytes)."""

from __future__ import annotations

import codecs
from pathlib import Path

from pipeline.errors import DataError

ENCODING_HINT = "set data.encoding in params.yaml, e.g. latin-1, if the file uses another encoding"
BINARY_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive (an Excel .xlsx workbook? export it as csv)",
    b"\x1f\x8b": "gzip-compressed data (decompress it first)",
    b"PAR1": "a parquet file (set data.format: parquet)",
}
CONTROL_BYTES = frozenset(range(32)) - frozenset(b"\t\n\r\f\v") | {127}  # rare in text, common in binary data


def decode(path: Path, encoding: str, hint: str = ENCODING_HINT) -> str:
    """Decode a whole file, naming the line and byte of the first undecodable character."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    check_text(path, data, codec)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not valid {encoding} ({hint})") from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding '{encoding}' (data.encoding in params.yaml)") from None


def check_text(path: Path, data: bytes, codec: str) -> None:
    """Stop on a binary file (an image, a workbook, random bytes), or on UTF-16 text read as another encoding."""
    if codec.lower().replace("_", "-").startswith(("utf-16", "utf-32")):
        return
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    kind = next((name for magic, name in BINARY_SIGNATURES.items() if data.startswith(magic)), None)
    if kind:
        raise DataError(f"{path}: this is {kind}, not a text data file")
    head = data[:8192]
    if b"\x00" in head or sum(byte in CONTROL_BYTES for byte in head) > len(head) // 20:
        raise DataError(f"{path}: this looks like a binary file (it holds control bytes such as NUL), not a text data file")
