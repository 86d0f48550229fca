"""Where a parquet vector column's float32 values lie in its files, when they lie there as they are.

hubembed's shards store the embedding column PLAIN, uncompressed and without a dictionary
(output.parquet_options), so each data page holds the vectors' bytes exactly as a float32
matrix holds them, after the page header and the list's repetition and definition levels.
Copying those byte ranges is all a load needs: no Arrow decoding of 38 million list levels
(benchmarks/README.md, "Load"). Anything else (compressed or dictionary pages, nulls, a
variable-length list, a page kind we do not know) gives None, and the caller decodes.

Page headers are Thrift compact structs; only the few fields needed are read, the rest skipped.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

# parquet.thrift: PageType and Encoding values.
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN, _RLE = 0, 3
# Thrift compact protocol field types.
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# A byte range of a file: (path, offset, length).
Range = tuple[Path, int, int]


class _Unknown(Exception):
    """A page this reader does not take apart: decode the column instead."""


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Unknown("page header runs past the bytes read")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int) -> None:
        if kind in (_TRUE, _FALSE):
            return
        if kind == _BYTE:
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _BINARY:
            length = self.varint()  # read before self.pos is: the varint moves it
            self.pos += length
        elif kind in (_LIST, _SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            for _ in range(size):
                if element in (_TRUE, _FALSE):
                    self.pos += 1  # a list's booleans take a byte each
                else:
                    self.skip(element)
        elif kind == _MAP:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip(types >> 4)
                    self.skip(types & 0x0F)
        elif kind == _STRUCT:
            self.struct(lambda field, kind: self.skip(kind))
        else:
            raise _Unknown(f"thrift type {kind}")

    def struct(self, field_fn: Any) -> None:
        """Read a struct, calling FIELD_FN(field id, type) for each field; it must consume it."""
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.zigzag()
            field_fn(last, kind)


def _page_header(data: bytes) -> tuple[dict[str, int], int]:
    """The fields of the PageHeader at the start of DATA that say where its values are, and the
    header's length in bytes."""
    r = _Reader(data)
    out: dict[str, int] = {}
    sub_names = {
        5: {1: "num_values", 2: "encoding", 3: "def_encoding", 4: "rep_encoding"},
        8: {1: "num_values", 2: "num_nulls", 4: "encoding", 5: "def_bytes", 6: "rep_bytes", 7: "compressed"},
    }

    def top(field: int, kind: int) -> None:
        if field in (1, 3) and kind == _I32:
            out["type" if field == 1 else "size"] = r.zigzag()
        elif field in sub_names and kind == _STRUCT:
            names = sub_names[field]

            def sub(f: int, k: int) -> None:
                if f in names and k in (_I32, _I64):
                    out[names[f]] = r.zigzag()
                elif f in names and k in (_TRUE, _FALSE):
                    out[names[f]] = int(k == _TRUE)
                else:
                    r.skip(k)

            r.struct(sub)
        else:
            r.skip(kind)

    r.struct(top)
    return out, r.pos


def plain_ranges(
    files: list[Path], column: str, *, first_only: bool = False
) -> tuple[int, list[Range]] | None:
    """The dimension d and the byte ranges, in row order, that hold COLUMN's vectors of FILES as
    float32 little-endian, d per row; None if any part is stored otherwise (then decode it).
    FIRST_ONLY: only each file's first page, whose range starts with the file's first vector."""
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    if sys.byteorder != "little":
        return None
    ranges: list[Range] = []
    dimension = None
    try:
        for path in files:
            pf = pq.ParquetFile(path)
            field = pf.schema_arrow.field(column)
            if not pa.types.is_fixed_size_list(field.type) or dimension not in (None, field.type.list_size):
                return None
            dimension = field.type.list_size
            if not pa.types.is_float32(field.type.value_type):
                return None
            leaves = [i for i in range(len(pf.schema)) if pf.schema.column(i).path.split(".")[0] == column]
            if len(leaves) != 1 or pf.schema.column(leaves[0]).physical_type != "FLOAT":
                return None
            leaf = pf.schema.column(leaves[0])
            with open(path, "rb") as fh:
                for g in range(pf.metadata.num_row_groups):
                    chunk = pf.metadata.row_group(g).column(leaves[0])
                    rows = pf.metadata.row_group(g).num_rows
                    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
                        return None
                    levels = leaf.max_repetition_level, leaf.max_definition_level
                    found = _chunk_ranges(fh, path, chunk, *levels, first_only=first_only)
                    if first_only:
                        ranges.extend(found)
                        break
                    if sum(length for _, _, length in found) != rows * dimension * 4:
                        return None  # null vectors or elements: fewer values than rows x d
                    ranges.extend(found)
    except (_Unknown, KeyError, OSError, struct.error):
        return None
    return (dimension, ranges) if dimension else None


def _chunk_ranges(
    fh: Any, path: Path, chunk: Any, max_rep: int, max_def: int, *, first_only: bool = False
) -> list[Range]:
    """The value ranges of one column chunk's data pages (FIRST_ONLY: of its first page)."""
    ranges = []
    pos, end = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size
    while pos < end:
        fh.seek(pos)
        head = fh.read(min(64 << 10, end - pos))
        header, length = _page_header(head)
        body, size = pos + length, header.get("size", -1)
        if size < 0 or header.get("encoding") != _PLAIN:
            raise _Unknown(f"page {header}")
        kind = header.get("type")
        if kind == _DATA_PAGE:
            if {header.get("def_encoding", _RLE), header.get("rep_encoding", _RLE)} != {_RLE}:
                raise _Unknown("levels not RLE: no length before them")
            levels = 0
            for present in (max_rep > 0, max_def > 0):
                if present:  # v1 levels: a 4-byte length, then the RLE runs
                    fh.seek(body + levels)
                    (n,) = struct.unpack("<i", fh.read(4))
                    levels += 4 + n
        elif kind == _DATA_PAGE_V2 and not header.get("compressed", 1) and not header.get("num_nulls", 0):
            levels = header.get("rep_bytes", 0) + header.get("def_bytes", 0)
        else:
            raise _Unknown(f"page {header}")
        values = size - levels
        if values != header.get("num_values", -1) * 4:
            raise _Unknown("a page holds nulls")
        ranges.append((path, body + levels, values))
        if first_only:
            break
        pos = body + size
    return ranges
