"""What a tip file may be (text: CSV or JSON Lines, UTF-8) and the reject file of its bad rows.

Handoff never accepts images or video. A file is refused by its name (only .csv, .jsonl and
.ndjson) when it comes through the web, and always by its content: known image, video, audio,
document and archive signatures (text images too: SVG, Netpbm, XPM, XBM, PostScript; and
HTML pages), an image, video or audio file carried inside as a data: URL (in JSON Lines also
spelled with escapes: the reader refuses those), NUL bytes or other binary control
characters, and anything that is not UTF-8.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import unicodedata

from app.services import DomainError
from app.services.exports import neutralise
from app.services.tips import reader

EXTENSIONS = (".csv", ".jsonl", ".ndjson")
BINARY = "a binary file"
SNIFF_BYTES = 65536

# (offset, signature, what it is)
_SIGNATURES: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"\x00\x00\x01\x00", "an icon image"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
    (0, b"8BPS", "a Photoshop image"),
    (0, b"\x1aE\xdf\xa3", "a Matroska or WebM video"),
    (0, b"\x00\x00\x01\xba", "an MPEG video"),
    (0, b"\x00\x00\x01\xb3", "an MPEG video"),
    (0, b"FLV\x01", "a Flash video"),
    (0, b"OggS", "an Ogg audio or video file"),
    (0, b"ID3", "an MP3 audio file"),
    (0, b"fLaC", "a FLAC audio file"),
    (0, b"0&\xb2u\x8ef\xcf\x11", "a Windows Media video"),
    (0, b"%PDF", "a PDF document"),
    (0, b"{\\rtf", "an RTF document"),
    (0, b"PK\x03\x04", "a ZIP archive or office document"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"BZh", "a bzip2 archive"),
    (0, b"\xfd7zXZ\x00", "an xz archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document"),
    (0, b"SQLite format 3\x00", "an SQLite database"),
    (0, b"\x7fELF", "a program"),
    (0, b"MZ", "a Windows program"),
]
# RIFF containers: the form type at offset 8 says which.
_RIFF = {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV audio file"}
# ISO base media (MP4, MOV, HEIC, AVIF, 3GP): "ftyp" at offset 4.
_FTYP_IMAGES = (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis")

# Images (and a page) that are text. SVG: XML declarations and processing instructions, comments or a
# doctype (with an internal subset), then an <svg> element, its namespace prefix or not.
_SVG = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?.*?\?>\s*|<!--.*?-->\s*|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>\s*)*"
                  rb"<(?:[\w.-]+:)?svg[\s>/]", re.IGNORECASE | re.DOTALL)
_TEXT_IMAGES = [
    (re.compile(rb"\A(?:\xef\xbb\xbf)?\s*P[1-7]\s+(?:#[^\n]*\s+)*\d+\s+\d+"), "a Netpbm image (PBM, PGM, PPM)"),
    (re.compile(rb"\A(?:\xef\xbb\xbf)?\s*/\*\s*XPM\s*\*/"), "an XPM image"),
    (re.compile(rb"\A(?:\xef\xbb\xbf)?\s*#define\s+\w*_width\s+\d+"), "an XBM image"),
    (re.compile(rb"\A(?:\xef\xbb\xbf)?%!PS"), "a PostScript or EPS image"),
    (re.compile(rb"\A(?:\xef\xbb\xbf)?\s*(?:<!--.*?-->\s*)*<(?:!DOCTYPE\s+html|html)[\s>]", re.IGNORECASE | re.DOTALL),
     "an HTML page"),
]
# An image, video or audio file carried inside a text file, as a data: URL (a provider's
# thumbnail, say): 0.07 s over a full tip's 27 MB.
# (JSON Lines can spell one with escapes, \u0064ata: or image\/png: the reader looks for it in
# the values it decodes, reader.MediaInTip.)
_MEDIA_URL = re.compile(reader.MEDIA_URL.encode(), re.IGNORECASE)
_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

_BINARY_BYTES = reader.CONTROL_CHARACTERS.encode("ascii")
_OTHER_BYTES = bytes(b for b in range(256) if b not in _BINARY_BYTES)
_BINARY_BYTE = re.compile(b"[" + re.escape(_BINARY_BYTES) + b"]")


def media_kind(head: bytes) -> str | None:
    """What a file is when its first bytes say it is not text, else None."""
    for offset, signature, what in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return what
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":  # "BM", the file's size, four reserved zero bytes
        return "a BMP image"
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "an image (HEIC/AVIF)" if brand in _FTYP_IMAGES else "an MP4 or QuickTime video"
    if head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16 or UTF-32 text (save it as UTF-8)"
    if _utf16_without_bom(head):
        return "UTF-16 text (save it as UTF-8)"
    if head[:SNIFF_BYTES].translate(None, _OTHER_BYTES):  # anything left is a binary control byte
        return BINARY
    if _SVG.match(head):
        return "an SVG image"
    for pattern, what in _TEXT_IMAGES:
        if pattern.match(head):
            return what
    return None


def _utf16_without_bom(head: bytes) -> bool:
    """Text of ASCII letters in UTF-16 without its byte-order mark: every other byte is zero."""
    if len(head) < 8:
        return False
    for zeros, letters in ((head[1::2], head[0::2]), (head[0::2], head[1::2])):
        if zeros.count(0) >= 0.9 * len(zeros) and letters.count(0) <= 0.1 * len(letters):
            return True
    return False


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def stored_name(file_name: str | None) -> str:
    """The name a tip's file is recorded under: its base name (no client-side folders), at
    most 255 characters, its extension kept (the import looks at it again)."""
    # Control characters (a NUL, a line end) have no place in a name shown and audited, nor
    # have the marks that turn text right to left (`tip\u202evsc.exe` shows as tipexe.csv).
    name = "".join("_" if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS else c
                   for c in os.path.basename(file_name or "tip"))
    if len(name) <= 255:
        return name
    stem, extension = os.path.splitext(name)
    extension = extension[:16]
    return stem[:255 - len(extension)] + extension


def check_name(file_name: str) -> None:
    extension = os.path.splitext(file_name or "")[1].lower()
    if extension not in EXTENSIONS:
        raise DomainError(
            f"A tip is a CSV or JSON Lines file (.csv, .jsonl, .ndjson); '{stored_name(file_name)}' "
            "is not. Handoff never accepts images, video or other files.", field="file")


def check_content(data: bytes) -> None:
    """Refuse media and binary files, and text that is not UTF-8."""
    if not data.removeprefix(b"\xef\xbb\xbf").strip():
        raise DomainError("The file is empty.", field="file")
    what = media_kind(data[:SNIFF_BYTES])
    if what is not None and what != BINARY:  # a binary byte in text: named with its line below
        raise DomainError(f"This file is {what}, not a CSV or JSON Lines tip. Handoff never accepts images, "
                          "video or other binary files.", field="file")
    if data.translate(None, _OTHER_BYTES):  # some binary control byte, past the head (8 ms a tip's 27 MB)
        control = _BINARY_BYTE.search(data)
        line = reader.line_ends(data, 0, control.start()) + 1
        raise DomainError(f"The file holds a binary control character (byte 0x{data[control.start()]:02x} on line "
                          f"{line}), which no text tip holds. Handoff never accepts images, video or other binary "
                          "files.", field="file")
    # (A word before it, "metadata:", makes it none; a look-behind in the pattern costs 3x.)
    media = next((m.start() for m in _MEDIA_URL.finditer(data)
                  if m.start() == 0 or data[m.start() - 1] not in _WORD_BYTES), None)
    if media is not None:
        raise media_refusal(reader.line_ends(data, 0, media) + 1)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = reader.line_ends(data, 0, exc.start) + 1
        raise DomainError(f"The file is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}). "
                          "Save it as UTF-8 and import it again.", field="file") from None


def media_refusal(line: int) -> DomainError:
    return DomainError(f"The file holds an encoded image, video or audio file (a data: URL on line {line}). "
                       "Handoff never accepts images or video: take it out and import the file again.", field="file")


def detect_format(file_name: str, data: bytes) -> str:
    return reader.detect_format(file_name or "", data[:SNIFF_BYTES])


# --- the reject file ------------------------------------------------------------------------

REJECT_COLUMNS = reader.REJECT_COLUMNS


def reject_file_bytes(text: str) -> bytes:
    """A reject file as handed out: UTF-8 behind a byte-order mark, without which a spreadsheet
    reads the file in the computer's own code page and garbles every name outside ASCII (the
    reader takes the mark off again)."""
    return codecs.BOM_UTF8 + text.encode("utf-8")


def reject_csv(columns: list[str], errors: list[reader.RowError], records: dict[int, dict[str, str]]) -> str:
    """CSV of the bad rows: the file's tip columns as it names them, then line, field and
    reason. One row per bad line; several problems on a line are joined with " | ". Values
    are kept as they were, so the file can be corrected and imported again (the reader does not
    read the three extra columns), except that a cell a spreadsheet would run as a formula is
    written behind an apostrophe, which the reader takes off again. Columns that are no tip field
    are left out: the import names them, and nothing it does not read is kept (an earlier
    reject file's three columns among them). A row that could not be read at all (not JSON,
    or beyond the csv module) has only its line, field and reason."""
    columns = list(columns) or list(reader.FIELDS)
    kept = [(name, key) for name, key in zip(columns, reader.record_keys(columns)) if key in reader.FIELDS]
    by_line: dict[int, list[reader.RowError]] = {}
    for error in errors:
        by_line.setdefault(error.line, []).append(error)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    # Names as the reader reads them (stripped): a name behind a formula's apostrophe would not be.
    writer.writerow([name.strip() for name, _key in kept] + list(REJECT_COLUMNS))
    for line in sorted(by_line):
        problems = by_line[line]
        # A row whose values do not line up with the columns has them in its reason instead:
        # under the columns they would make a good row of the wrong values.
        record = {} if any(p.field == reader.WHOLE_RECORD for p in problems) else records.get(line, {})
        # The field column names fields (or "-", the whole record): ours, no formula to defuse.
        writer.writerow([*map(neutralise, [record.get(key, "") for _name, key in kept]), line,
                         " | ".join(p.field for p in problems), neutralise(" | ".join(p.reason for p in problems))])
    return buffer.getvalue()
