"""The parts of an ONNX file the graph identity needs, read straight from protobuf's wire format.

``import onnx`` costs seconds on a small device (it loads ml_dtypes and the whole helper
API), and ``onnx.load`` copies every weight into the parsed message. This reader walks
the protobuf fields of ``ModelProto`` (onnx/onnx.proto, which ONNX keeps wire-compatible)
and keeps only names, op types, attributes, tensor dims, small tensor values and
``metadata_props``; a weight's bytes are skipped by offset, never copied.

Torch-free and onnx-free: this module runs on the device.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Graph", "Model", "Node", "ProtoError", "Tensor", "ValueInfo", "parse_model"]

#: Tensors with at most this many elements keep their values (pads, shapes, axes).
SMALL = 64
# TensorProto.DataType -> numpy dtype, for the small tensors whose values are kept
_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    value: np.ndarray | None = None  # only for tensors of at most SMALL elements


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValueInfo:
    name: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    initializers: tuple[Tensor, ...]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]


@dataclass(frozen=True)
class Model:
    graph: Graph
    metadata: dict[str, str]


# ----------------------------------------------------------------------------- wire format

def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtoError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varint / fixed, a memoryview for bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: Any
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > len(buf):
                raise ProtoError("truncated fixed-size field")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ProtoError("a field runs past the end of its message")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, value: Any) -> list[int]:
    """A repeated int64 field's items in one record: packed (bytes) or one varint."""
    if wire != _LEN:
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace")


# ----------------------------------------------------------------------------- messages

def _tensor(buf: memoryview) -> Tensor:
    dims: list[int] = []
    name, dtype, raw, ints, floats = "", 0, None, [], []
    for number, wire, value in _fields(buf):
        if number == 1:
            dims += _ints(wire, value)
        elif number == 2:
            dtype = value
        elif number == 8:
            name = _text(value)
        elif number == 9:
            raw = value
        elif number in (5, 7):            # int32_data, int64_data
            ints += _ints(wire, value)
        elif number == 4:                 # float_data (packed floats)
            floats += list(np.frombuffer(bytes(value), "<f4")) if wire == _LEN else \
                [struct.unpack("<f", value.to_bytes(4, "little"))[0]]
    count = int(np.prod(dims)) if dims else 1
    arr = None
    if count <= SMALL and dtype in _DTYPES:
        if raw is not None:
            arr = np.frombuffer(bytes(raw), np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        else:
            arr = np.asarray(ints or floats, dtype=_DTYPES[dtype])
        arr = arr.reshape(dims) if arr.size == count else None
    return Tensor(name, tuple(dims), arr)


def _attribute(buf: memoryview) -> tuple[str, Any]:
    name, kind = "", 0
    got: dict[int, Any] = {}
    ints: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 20:
            kind = value
        elif number == 8:
            ints += _ints(wire, value)
        elif number in (2, 3, 4, 5):      # f, i, s, t
            got[number] = value
    if kind == 1:                          # FLOAT
        return name, struct.unpack("<f", got.get(2, 0).to_bytes(4, "little"))[0]
    if kind == 2:                          # INT
        return name, _signed(got.get(3, 0))
    if kind == 3:                          # STRING
        return name, _text(got.get(4, b""))
    if kind == 4:                          # TENSOR
        return name, _tensor(got[5]) if 5 in got else None
    return name, ints if kind == 7 else None   # INTS; other kinds are not needed


def _node(buf: memoryview) -> Node:
    inputs, outputs, attrs = [], [], {}
    op, domain, name = "", "", ""
    for number, _, value in _fields(buf):
        if number == 1:
            inputs.append(_text(value))
        elif number == 2:
            outputs.append(_text(value))
        elif number == 3:
            name = _text(value)
        elif number == 4:
            op = _text(value)
        elif number == 7:
            domain = _text(value)
        elif number == 5:
            key, attr = _attribute(value)
            attrs[key] = attr
    return Node(op, domain, name, tuple(inputs), tuple(outputs), attrs)


def _shape(buf: memoryview) -> tuple[int | str, ...]:
    """TypeProto -> tensor_type (1) -> shape (2) -> dims (1): dim_value (1) / dim_param (2)."""
    dims: list[int | str] = []
    for n1, _, tensor_type in _fields(buf):
        for n2, _, shape in _fields(tensor_type) if n1 == 1 else ():
            for n3, _, dim in _fields(shape) if n2 == 2 else ():
                if n3 != 1:
                    continue
                d: int | str = "?"
                for n4, _, v in _fields(dim):
                    d = _signed(v) if n4 == 1 else (_text(v) if n4 == 2 else d)
                dims.append(d)
    return tuple(dims)


def _value_info(buf: memoryview) -> ValueInfo:
    name = ""
    shape: tuple[int | str, ...] = ()
    for number, _, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2:
            shape = _shape(value)
    return ValueInfo(name, shape)


def _graph(buf: memoryview) -> Graph:
    nodes, inits, inputs, outputs = [], [], [], []
    for number, _, value in _fields(buf):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            inits.append(_tensor(value))
        elif number == 11:
            inputs.append(_value_info(value))
        elif number == 12:
            outputs.append(_value_info(value))
    return Graph(tuple(nodes), tuple(inits), tuple(inputs), tuple(outputs))


def parse_model(data: bytes | mmap.mmap) -> Model:
    """The graph and ``metadata_props`` of a serialized ``ModelProto`` (bytes or a mmap,
    only whose touched pages are read); ProtoError if the bytes are not one."""
    buf = memoryview(data)
    graph, meta = None, {}
    for number, wire, value in _fields(buf):
        if number == 7 and wire == _LEN:
            graph = _graph(value)
        elif number == 14 and wire == _LEN:
            entry = {n: _text(v) for n, _, v in _fields(value)}
            meta[entry.get(1, "")] = entry.get(2, "")
    if graph is None:
        raise ProtoError("no graph")
    return Model(graph, meta)
