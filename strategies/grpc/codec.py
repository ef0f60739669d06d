"""Tensors <-> protocol messages, for both ends: raw little-endian bytes (the recommended
encoding) or JSON lists (the naive one quick examples use). No pickle, no eval: raw bytes are read
with numpy.frombuffer, JSON with json.loads, and both are checked against the model's spec."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from fixtures.specs import BATCH, TensorSpec

TO_DATATYPE = {"bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "int32": "INT32",
               "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}
FROM_DATATYPE = {v: np.dtype(k).newbyteorder("<") for k, v in TO_DATATYPE.items()}
RAW, JSON = "raw", "json"
ENCODINGS = (RAW, JSON)
LITTLE = sys.byteorder == "little"


class BadRequest(ValueError):
    """A request that does not fit the model: the server answers INVALID_ARGUMENT with this text."""


def datatype(arr: np.ndarray) -> str:
    try:
        return TO_DATATYPE[arr.dtype.name]
    except KeyError:
        raise BadRequest(f"dtype {arr.dtype} has no protocol datatype") from None


REQUEST_RAW_FIELD = 7  # ModelInferRequest.raw_input_contents
RESPONSE_RAW_FIELD = 6  # ModelInferResponse.raw_output_contents


def request_message(pb2, arrays: dict[str, np.ndarray], encoding: str, model_name: str):
    """A ModelInferRequest with tensor metadata (and, for JSON, the data); raw bytes not attached."""
    req = pb2.ModelInferRequest(model_name=model_name)
    _describe(arrays, encoding, pb2.ModelInferRequest.InferInputTensor, req.inputs, req.parameters)
    return req


def response_message(pb2, arrays: dict[str, np.ndarray], encoding: str, model_name: str, request_id: str):
    resp = pb2.ModelInferResponse(model_name=model_name, id=request_id)
    _describe(arrays, encoding, pb2.ModelInferResponse.InferOutputTensor, resp.outputs, resp.parameters)
    return resp


def encode_request(pb2, arrays: dict[str, np.ndarray], encoding: str, model_name: str):
    """The complete protobuf message, as any client built from the .proto would send it."""
    req = request_message(pb2, arrays, encoding, model_name)
    if encoding == RAW:
        req.raw_input_contents.extend(_le(a).tobytes() for a in arrays.values())
    return req


class Layout:
    """One raw-encoded message shape: its metadata, serialized once (``header``), then one raw
    contents field per tensor. Writes a message with one copy of each tensor into the wire buffer
    instead of three (tobytes, the field, serialization), and reads one with no copy at all: arrays
    over the bytes where gRPC put them. Each fresh buffer of a large payload costs page faults,
    which is what dominates large payloads.

    Byte for byte what protobuf produces for the full message: the raw field has the highest field
    number, and protobuf writes fields in number order.
    """

    __slots__ = ("header", "tensors", "size", "extra")

    def __init__(self, header: bytes, field: int, layout: tuple[tuple[str, np.dtype, tuple[int, ...]], ...], extra=None) -> None:
        tag = _varint_bytes(field << 3 | 2)
        self.header, self.extra = header, extra  # extra: what the owner needs again on a hit
        self.tensors = []
        size = len(header)
        for name, dtype, shape in layout:
            count = math.prod(shape)
            prefix = tag + _varint_bytes(count * dtype.itemsize)
            self.tensors.append((name, dtype, tuple(shape), count, prefix))
            size += len(prefix) + count * dtype.itemsize
        self.size = size

    def write(self, arrays) -> bytes:
        parts: list = [self.header]
        for (_, _, _, _, prefix), a in zip(self.tensors, arrays):
            if not (a.flags.c_contiguous and _little(a.dtype)):  # else bytes.join reads the array's buffer as is
                a = np.ascontiguousarray(_le(a))
            parts += (prefix, a)
        return b"".join(parts)

    def read(self, data: bytes) -> dict[str, np.ndarray] | None:
        """The arrays, if ``data`` is exactly this layout (same metadata bytes, same tensor sizes); else None."""
        if len(data) != self.size or not data.startswith(self.header):
            return None
        pos, out = len(self.header), {}
        for name, dtype, shape, count, prefix in self.tensors:
            if not data.startswith(prefix, pos):
                return None
            pos += len(prefix)
            out[name] = np.frombuffer(data, dtype, count, pos).reshape(shape)
            pos += count * dtype.itemsize
        return out

    def from_raw(self, raw: list[memoryview]) -> dict[str, np.ndarray]:
        """Arrays over raw contents already split from a message with this layout's metadata."""
        if len(raw) != len(self.tensors):
            raise BadRequest(f"{len(self.tensors)} tensors but {len(raw)} raw contents")
        out = {}
        for (name, dtype, shape, count, _), buf in zip(self.tensors, raw):
            if len(buf) != count * dtype.itemsize:
                raise BadRequest(f"tensor {name!r}: {len(buf)} bytes for shape {list(shape)} (expected {count * dtype.itemsize})")
            out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
        return out


def signature(arrays: dict[str, np.ndarray]) -> tuple:
    return tuple([(k, v.dtype, v.shape) for k, v in arrays.items()])  # dtypes of other byte order differ


class Layouts:
    """The raw-encoded message layouts one end of a connection has seen, both ways.

    Writing: the metadata of a message depends only on the tensors' names, dtypes and shapes (and
    the owner's ``extra``), so it is serialized once per signature. Reading: a message whose metadata
    bytes were seen (and, on the server, validated) before needs only its data checked; the layout
    of the previous message is tried first, so a steady stream of same-shaped calls costs a prefix
    comparison per call instead of a protobuf parse. Anything else goes the slow way
    (``unknown``), and the owner teaches the result (``learn``).
    """

    #: metadata (names, dtypes, shapes, the request id) larger than this is never cached: a client
    #: string of a few MiB must not stay in memory for the life of a server
    MAX_KEY_BYTES = 4096

    def __init__(self, read_field: int, write_field: int, limit: int = 64) -> None:
        self.read_field, self.write_field, self.limit = read_field, write_field, limit
        self._written: dict[tuple, Layout] = {}
        self._read: dict[bytes, Layout] = {}
        self._last: Layout | None = None

    def cached_bytes(self) -> int:
        """What the caches hold of the messages' metadata, in bytes (bounded: limit x MAX_KEY_BYTES each way)."""
        return sum(len(k) for k in self._read) + sum(len(v.header) for v in self._written.values())

    def writer(self, arrays: dict[str, np.ndarray], make_header, extra=None) -> Layout:
        """The layout to write ``arrays`` with; ``make_header(arrays, extra)`` serializes the metadata
        of a signature not seen before."""
        key = (extra, signature(arrays))
        layout = self._written.get(key)
        if layout is None:
            layout = Layout(make_header(arrays, extra), self.write_field, key[1])
            if len(self._written) < self.limit and len(layout.header) <= self.MAX_KEY_BYTES:
                self._written[key] = layout
        return layout

    def read(self, data: bytes) -> tuple[Layout | None, dict[str, np.ndarray] | None, tuple[bytes, list[memoryview]]]:
        """(layout, arrays, _) for a message of a known layout, else (None, None, (metadata bytes,
        raw contents)) for the caller to parse, check and ``learn``."""
        last = self._last
        if last is not None:
            arrays = last.read(data)
            if arrays is not None:
                return last, arrays, (b"", [])
        meta, raw = split(data, self.read_field)
        layout = self._read.get(meta)
        if layout is None:
            return None, None, (meta, raw)
        arrays = layout.from_raw(raw)
        self._last = layout
        return layout, arrays, (meta, raw)

    def learn(self, meta: bytes, arrays: dict[str, np.ndarray], extra=None) -> None:
        if len(self._read) < self.limit and len(meta) <= self.MAX_KEY_BYTES:
            layout = Layout(bytes(meta), self.read_field, signature(arrays), extra)
            self._read[layout.header] = self._last = layout


def split(data: bytes, raw_field: int) -> tuple[bytes, list[memoryview]]:
    """(the message's other fields, still serialized; [memoryview of each raw content]): the
    tensors' bytes are not copied, numpy.frombuffer reads them where gRPC put them."""
    mv = memoryview(data)
    n, pos = len(mv), 0
    rest: list[memoryview] = []
    raws: list[memoryview] = []
    try:
        while pos < n:
            start = pos
            key, pos = _read_varint(mv, pos)
            wire = key & 7
            if wire == 2:
                length, pos = _read_varint(mv, pos)
                if pos + length > n:
                    raise BadRequest("truncated message")
                if key >> 3 == raw_field:
                    raws.append(mv[pos:pos + length])
                    pos += length
                    continue
                pos += length
            elif wire == 0:
                _, pos = _read_varint(mv, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise BadRequest(f"unsupported protobuf wire type {wire}")
            rest.append(mv[start:pos])
    except IndexError:
        raise BadRequest("truncated message") from None
    return b"".join(rest), raws


def parse_message(cls, data: bytes):
    try:
        return cls.FromString(data)
    except Exception as e:  # protobuf DecodeError on garbage
        raise BadRequest(f"malformed message: {e}") from None


def _varint_bytes(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(mv: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = mv[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BadRequest("malformed varint")


def _little(dtype: np.dtype) -> bool:
    return dtype.byteorder in "<|" or (dtype.byteorder == "=" and LITTLE)


def _le(a: np.ndarray) -> np.ndarray:
    return a if _little(a.dtype) else a.astype(a.dtype.newbyteorder("<"))


def request_encoding(message) -> str:
    enc = message.parameters["encoding"].string_param if "encoding" in message.parameters else RAW
    if enc not in ENCODINGS:
        raise BadRequest(f"encoding {enc!r} unknown (use one of {', '.join(ENCODINGS)})")
    return enc


def _describe(arrays: dict[str, np.ndarray], encoding: str, tensor_cls, tensors, parameters) -> None:
    """Tensor metadata into ``tensors``; for the naive encoding also the data, as JSON text in each
    tensor's contents.bytes_contents (what quick examples do)."""
    for name, arr in arrays.items():
        t = tensor_cls(name=name, datatype=datatype(arr), shape=arr.shape)
        if encoding == JSON:
            t.contents.bytes_contents.append(json.dumps(arr.tolist()).encode())
        tensors.append(t)
    if encoding == JSON:
        parameters["encoding"].string_param = JSON


def decode(tensors, raw_contents, encoding: str) -> dict[str, np.ndarray]:
    """Arrays from a message's tensors. Raises BadRequest on anything malformed."""
    out: dict[str, np.ndarray] = {}
    if encoding == RAW and len(raw_contents) != len(tensors):
        raise BadRequest(f"{len(tensors)} tensors but {len(raw_contents)} raw contents")
    for i, t in enumerate(tensors):
        if t.name in out:
            raise BadRequest(f"tensor {t.name!r} given twice")
        if t.datatype not in FROM_DATATYPE:
            raise BadRequest(f"tensor {t.name!r}: datatype {t.datatype!r} unknown (use one of {', '.join(FROM_DATATYPE)})")
        dtype = FROM_DATATYPE[t.datatype]
        shape = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(f"tensor {t.name!r}: negative dimension in shape {list(shape)}")
        count = math.prod(shape)
        if encoding == RAW:
            buf = raw_contents[i]
            if len(buf) != count * dtype.itemsize:
                raise BadRequest(f"tensor {t.name!r}: {len(buf)} bytes for shape {list(shape)} {t.datatype} "
                                 f"(expected {count * dtype.itemsize})")
            try:
                arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
            except ValueError as e:  # e.g. [0, 2**62]: no bytes, but a dimension NumPy cannot hold
                raise BadRequest(f"tensor {t.name!r}: shape {list(shape)[:8]} cannot be an array ({e})") from None
        else:
            if len(t.contents.bytes_contents) != 1:
                raise BadRequest(f"tensor {t.name!r}: JSON encoding needs one bytes_contents entry")
            try:
                arr = np.asarray(json.loads(t.contents.bytes_contents[0]), dtype=dtype)
            except (ValueError, TypeError) as e:
                raise BadRequest(f"tensor {t.name!r}: not a JSON list of numbers ({str(e)[:200]})") from None
            except RecursionError:  # a list nested thousands deep: refused, not a crash of the call
                raise BadRequest(f"tensor {t.name!r}: JSON nested too deeply") from None
            if arr.shape != shape:
                raise BadRequest(f"tensor {t.name!r}: JSON holds shape {list(arr.shape)}, declared {list(shape)}")
        out[t.name] = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    return out


@dataclass(frozen=True)
class InputCheck:
    specs: tuple[TensorSpec, ...]
    dims: tuple[tuple[str, int, int], ...] = ()  # a named dimension (seq): name, low, high

    def check(self, arrays: dict[str, np.ndarray]) -> None:
        """Names, dtypes and shapes against the model's spec; the batch dimension must agree, and a named
        dimension must be one size within its range in every input that has it."""
        want = {t.name: t for t in self.specs}
        missing = sorted(set(want) - set(arrays))
        extra = sorted(set(arrays) - set(want))
        if missing or extra:
            raise BadRequest("input names do not match the model: " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []))
                + f" (model takes {sorted(want)})")
        batch = None
        ranges = {n: (lo, hi) for n, lo, hi in self.dims}
        sizes: dict[str, int] = {}
        for name, arr in arrays.items():
            spec = want[name]
            if arr.dtype.name != spec.dtype:
                raise BadRequest(f"input {name!r}: datatype {TO_DATATYPE.get(arr.dtype.name, arr.dtype.name)} "
                                 f"but the model takes {TO_DATATYPE[spec.dtype]}")
            if arr.ndim != len(spec.shape):
                raise BadRequest(f"input {name!r}: shape {list(arr.shape)} has rank {arr.ndim}, "
                                 f"the model takes {spec.describe().split(':', 1)[1]}")
            for got, dim in zip(arr.shape, spec.shape):
                if dim == BATCH:
                    if batch is not None and got != batch:
                        raise BadRequest(f"input {name!r}: batch {got} differs from another input's {batch}")
                    batch = got
                elif isinstance(dim, str):
                    lo, hi = ranges.get(dim, (1, 0))
                    if not lo <= got <= hi:
                        raise BadRequest(f"input {name!r}: {dim}={got} is outside its range {lo}..{hi}")
                    if sizes.setdefault(dim, got) != got:
                        raise BadRequest(f"input {name!r}: {dim}={got} differs from another input's {sizes[dim]}")
                elif got != dim:
                    raise BadRequest(f"input {name!r}: shape {list(arr.shape)} does not fit "
                                     f"{spec.describe().split(':', 1)[1]}")
