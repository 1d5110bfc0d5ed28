"""TensorBoard event files, written directly: scalars and PNG images.

An event file is a TFRecord stream of `Event` protocol buffers. Each record is
`uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`
(little-endian), and the first event carries `file_version = "brain.Event:2"`. The few
message fields a training log needs are encoded by hand (field numbers from
TensorBoard's `event.proto` and `summary.proto`):

    Event         1: wall_time (double)  2: step (int64)  3: file_version (string)
                  5: summary (Summary)
    Summary       1: value (repeated Value)
    Value         1: tag (string)  2: simple_value (float)  4: image (Image)
    Image         1: height  2: width  3: colorspace (int32)  4: encoded_image_string

So logging needs neither TensorFlow nor tensorboardX, and tensorboardX's optional torch
import (seconds of start-up, and a runtime path into PyTorch) never happens.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np

__all__ = ["EventWriter", "crc32c", "masked_crc32c"]


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord frames use."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64s as two's complement, as protobuf does
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _event(step: int, *, summary: bytes = b"", file_version: str = "") -> bytes:
    out = _key(1, 1) + struct.pack("<d", time.time()) + _int_field(2, step)
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    return out


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class EventWriter:
    """Appends events to `folder/events.out.tfevents.<time>.<host>` (created on first use).

    `scalar(tag, value, step)`, `image(tag, uint8[H, W, C], step)` with C in 1, 3, 4;
    `flush()`, `close()`. Write errors surface as `OSError` (the caller decides).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = None

    def _write(self, event: bytes) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open until close()
            self._write(_event(0, file_version="brain.Event:2"))
        header = struct.pack("<Q", len(event))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + event
                         + struct.pack("<I", masked_crc32c(event)))

    def scalar(self, tag: str, value: float, step: int) -> None:
        item = _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(value))
        self._write(_event(step, summary=_bytes_field(1, item)))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected uint8[H, W, 1|3|4], got {image.dtype}{image.shape}")
        h, w, c = image.shape
        encoded = _int_field(1, h) + _int_field(2, w) + _int_field(3, c) + _bytes_field(
            4, _png(image[..., 0] if c == 1 else image))
        item = _bytes_field(1, tag.encode()) + _bytes_field(4, encoded)
        self._write(_event(step, summary=_bytes_field(1, item)))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
