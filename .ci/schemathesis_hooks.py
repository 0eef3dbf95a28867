"""Schemathesis hooks for .ci/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

POST /api/recordings takes raw audio bytes (audio/wav, mpeg, ogg, flac, webm) with an empty
schema, which Schemathesis cannot serialize by itself: give each type a strategy that yields
a short valid-looking file of that type or arbitrary bytes (which the route must refuse with a
documented status).
"""
import struct

from hypothesis import strategies as st

import schemathesis


def wav(samples: int) -> bytes:
    data = b"\x00\x00" * samples
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


MAGIC = {
    "audio/wav": st.integers(0, 1600).map(wav),
    "audio/mpeg": st.just(b"ID3\x04\x00\x00\x00\x00\x00\x00"),
    "audio/ogg": st.just(b"OggS\x00\x02" + b"\x00" * 22),
    "audio/flac": st.just(b"fLaC\x00\x00\x00\x22" + b"\x00" * 34),
    "audio/webm": st.just(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01"),
}

for media_type, valid in MAGIC.items():
    schemathesis.openapi.media_type(media_type, st.one_of(valid, st.binary(max_size=256)))
