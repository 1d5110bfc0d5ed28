"""TensorBoard event files written without TensorFlow, tensorboardX or torch, read back
with tensorboardX's independent protobuf classes."""

import io
import struct
import subprocess
import sys

import numpy as np
from PIL import Image

from dreamlayer_jax.training.events import EventWriter, crc32c, masked_crc32c


def records(path):
    """The records of a TFRecord file, each frame's two CRCs checked."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12:pos + 12 + length]
        crc = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0]
        assert crc == masked_crc32c(body)
        out.append(body)
        pos += 16 + length
    assert pos == len(data)
    return out


def test_crc32c_matches_the_standard_check_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 (iSCSI) test vector: 32 zero bytes


def test_scalars_and_an_image_read_back_with_tensorboards_protos(tmp_path):
    from tensorboardX.proto import event_pb2

    writer = EventWriter(tmp_path / "tb")
    writer.scalar("train/loss", 0.25, 1)
    writer.scalar("train/loss", -3.5e-4, 2**40)
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    writer.image("samples/layers", image, 3)
    writer.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = [event_pb2.Event.FromString(r) for r in records(path)]
    assert events[0].file_version == "brain.Event:2"
    loss = [(e.step, e.summary.value[0].simple_value) for e in events[1:3]]
    assert loss == [(1, 0.25), (2**40, np.float32(-3.5e-4))]
    assert all(e.summary.value[0].tag == "train/loss" for e in events[1:3])
    value = events[3].summary.value[0]
    assert (events[3].step, value.tag) == (3, "samples/layers")
    assert (value.image.height, value.image.width, value.image.colorspace) == (5, 7, 3)
    decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
    np.testing.assert_array_equal(decoded, image)
    assert all(e.wall_time > 1e9 for e in events)


def test_logging_a_run_imports_no_torch(tmp_path):
    code = ("import sys\n"
            "import dreamlayer_jax.cli.train, dreamlayer_jax.cli.sample\n"
            "from dreamlayer_jax.training.logging import MetricsLogger\n"
            f"log = MetricsLogger({str(tmp_path)!r})\n"
            "log.scalars(1, {'loss': 0.5})\n"
            "log.close()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
