"""The TensorBoard event file lm.logs writes, read back by an independent reader (tensorboardX's
protobuf classes and CRC-32C): framing, checksums, scalars and text as TensorBoard expects them."""
import glob
import os
import struct

import pytest

from lm.logs import MetricsWriter, crc32c

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
tbx_crc = pytest.importorskip("tensorboardX.crc32c")


def _masked(c):
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
    """TFRecord records of `path`, each checked against its two masked CRC-32Cs."""
    data = open(path, "rb").read()
    out, i = [], 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[i + 8:i + 12])
        assert hcrc == _masked(tbx_crc.crc32c(header))
        rec = data[i + 12:i + 12 + n]
        (rcrc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        assert rcrc == _masked(tbx_crc.crc32c(rec))
        ev = event_pb2.Event()
        ev.ParseFromString(rec)
        out.append(ev)
        i += 16 + n
    return out


def test_crc32c_matches_an_independent_implementation():
    for b in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert crc32c(b) == tbx_crc.crc32c(b)
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_event_file_holds_scalars_and_text(tmp_path):
    w = MetricsWriter(str(tmp_path))
    w.write(3, loss=2.5, lr=1e-3, note="not a number", flag=True)
    w.write(7, loss=1.25, big=2 ** 40)
    w.write_text(7, "sample", "Once upon a time — ünïcode")
    w.write(-1, loss=0.5)
    w.close()
    (path,) = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value
               if v.HasField("simple_value")]
    assert scalars == [(3, "loss", 2.5), (3, "lr", pytest.approx(1e-3)), (7, "loss", 1.25),
                       (7, "big", float(2 ** 40)), (-1, "loss", 0.5)]
    texts = [(e.step, v) for e in events for v in e.summary.value if v.HasField("tensor")]
    assert len(texts) == 1
    step, v = texts[0]
    assert step == 7 and v.tag == "sample/text_summary"
    assert v.metadata.plugin_data.plugin_name == "text"
    assert v.tensor.dtype == 7 and [d.size for d in v.tensor.tensor_shape.dim] == [1]
    assert v.tensor.string_val[0].decode() == "Once upon a time — ünïcode"
    assert all(e.wall_time > 1.6e9 for e in events)


def test_event_file_is_readable_while_the_run_writes(tmp_path):
    w = MetricsWriter(str(tmp_path))
    w.write(1, loss=3.0)
    (path,) = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    assert [v.simple_value for e in read_events(path) for v in e.summary.value] == [3.0]
    w.close()
