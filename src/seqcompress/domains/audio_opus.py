"""Opus as a reference codec: a mono signal encoded as Ogg/Opus through libsndfile at a chosen bit rate, decoded
back, and the bits Opus actually produced.

libsndfile (1.2.2, bundled with soundfile 0.14.0) has one Opus control, SFC_SET_COMPRESSION_LEVEL (soundfile's
`compression_level`): level q asks the encoder for int((1 - q) * 250,000 + 6,000) bit/s per channel
(libsndfile's src/ogg_opus.c), so any whole rate from 6 to 256 kbit/s can be asked for. SFC_SET_BITRATE_MODE
is MPEG-only there: Opus runs in its default (unconstrained VBR) mode, with libsndfile's fixed complexity 10,
20 ms frames and OPUS_APPLICATION_AUDIO, so the rate it produces differs from the one asked for. That rate is
measured from the Opus packets in the Ogg stream; the two header packets (OpusHead, OpusTags, the latter
padded to 512 bytes by libsndfile) and the Ogg page headers are container, counted apart.

Opus takes 8, 12, 16, 24 or 48 kHz: a signal at another rate is resampled (libsoxr) to the next of those up
(48 kHz above it) and back. libsndfile trims the encoder's pre-skip and the last packet's padding, so the
decoded signal has the input's length and is aligned with it.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch

from seqcompress.domains.audio_signal import fit_length, resample

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # Hz the Opus encoder takes
MIN_BPS, MAX_BPS = 6000, 256000  # bit/s (per channel) libsndfile's compression level can ask for
_HEADER_PACKETS = 2  # OpusHead and OpusTags, before the audio packets (RFC 7845)


def opus_problem() -> str | None:
    """Why Opus cannot run here (libsndfile built without it), or None."""
    import soundfile as sf

    if "OPUS" not in sf.available_subtypes("OGG"):
        return f"the libsndfile here ({sf.__libsndfile_version__}) was built without Ogg/Opus"
    return None


@dataclasses.dataclass(frozen=True)
class OpusRoundTrip:
    """A signal through Opus: the decoded samples and the bit accounting."""

    samples: torch.Tensor  # (T,) float32, decoded, at the input's rate and length
    seconds: float  # the signal's duration
    target_bps: float  # the rate wanted
    asked_bps: int  # the rate libsndfile asked the encoder for: target rounded and held to MIN_BPS..MAX_BPS
    opus_rate: int  # Hz the encoder ran at
    packet_bytes: int  # the audio packets: what Opus produced
    container_bytes: int  # the rest of the Ogg stream (header packets, page headers)

    @property
    def produced_bps(self) -> float:
        """Bit/s of the audio packets."""
        return 8 * self.packet_bytes / self.seconds

    def describe(self) -> str:
        """One line: asked, produced and container rates."""
        held = "" if self.asked_bps == round(self.target_bps) else \
            f" (the budget's {self.target_bps / 1000:.2f} held to libsndfile's {MIN_BPS // 1000}-{MAX_BPS // 1000})"
        return (f"Opus at {self.opus_rate / 1000:g} kHz asked for {self.asked_bps / 1000:.2f} kbit/s{held}, produced "
                f"{self.produced_bps / 1000:.2f} kbit/s of packets (Ogg container {self.container_bytes:,} bytes more, "
                f"not counted)")


def ogg_packet_sizes(data: bytes) -> list[int]:
    """Bytes of each packet of an Ogg stream (RFC 3533: a page is a 27-byte header, a segment table of lacing
    values, then the segments; a packet ends at a lacing value below 255)."""
    sizes, current, pos = [], 0, 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS" or pos + 27 > len(data):
            raise ValueError(f"not an Ogg page at byte {pos}")
        count = data[pos + 26]
        lacing = data[pos + 27 : pos + 27 + count]
        for value in lacing:
            current += value
            if value < 255:
                sizes.append(current)
                current = 0
        pos += 27 + count + sum(lacing)
    return sizes


def opus_round_trip(x: torch.Tensor, rate: int, bps: float) -> OpusRoundTrip:
    """A mono signal x (T,) at `rate` Hz through Ogg/Opus asked for `bps` bit/s -> `OpusRoundTrip` (the decoded
    (T,) and the bits). RuntimeError when libsndfile lacks Opus (`opus_problem`)."""
    import soundfile as sf

    if problem := opus_problem():
        raise RuntimeError(problem)
    length = int(x.shape[-1])
    opus_rate = next((r for r in OPUS_RATES if r >= rate), OPUS_RATES[-1])
    signal = resample(x.float(), rate, opus_rate)
    asked = min(max(round(bps), MIN_BPS), MAX_BPS)
    # libsndfile truncates (1 - q) * 250,000 + 6,000 to an int: half a bit/s above `asked` lands on it exactly.
    level = min(max(1.0 - (asked - MIN_BPS + 0.5) / (MAX_BPS - MIN_BPS), 0.0), 1.0)
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", samplerate=opus_rate, channels=1, format="OGG", subtype="OPUS",
                      compression_level=level) as ogg:
        ogg.write(signal.double().numpy())
    data = buffer.getvalue()
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    back = fit_length(resample(torch.from_numpy(np.ascontiguousarray(decoded)), opus_rate, rate), length)
    packets = ogg_packet_sizes(data)
    audio = sum(packets[_HEADER_PACKETS:])
    return OpusRoundTrip(back, length / rate, float(bps), asked, opus_rate, audio, len(data) - audio)
