"""Reading one video file: its facts, and the moments worth embedding, as pixels for the model.

Runs in the decode workers beside pipeline.ingest.decode (PyAV, Pillow and numpy; never torch).
A video is decoded one frame at a time, never held whole: a small grayscale copy of a frame every
PROBE_S seconds tells scene changes (the pixels and the histogram of brightness both far from
the previous probe's: a pan or a moving subject changes the pixels but not the histogram), and
a moment is taken at each scene change and at least every `interval`
seconds. At most `max_frames` moments are kept, spread over the whole video: the interval is
widened to duration / max_frames when the header gives a duration, and when the moments still
outgrow the cap (a video without a duration, or one of many cuts) every other one is dropped and
the interval doubled. A video whose keyframes come at least every interval (phones write one
every second or two) is decoded keyframes only, many times faster, and finds the same cuts
(encoders start a keyframe at a cut); other videos are decoded frame by frame.

Every function returns a result or a failure; none raises for a bad file. Time and frame limits
(DECODE_BUDGET_S, MAX_DECODED_FRAMES, MAX_DURATION_S) end a stream that never ends; the decode
pool's own limit for videos (pool.VIDEO_TIMEOUT_S) backs them up.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import av
import numpy as np
from PIL import Image

from models.transform import ImageTransform
from pipeline.errors import first_line
from pipeline.ingest.decode import Decoded, DecodeFailed, decode_file, file_hash
from pipeline.ingest.scan import VIDEO_EXTENSIONS
from pipeline.ingest.sources import is_uri, open_binary

DEFAULT_INTERVAL_S = 2.0  # a moment at least this often (--video-interval)
DEFAULT_MAX_FRAMES = 300  # moments per video at most, spread over all of it (--video-max-frames)
PROBE_S = 0.25  # how often a small grayscale copy is compared for scene changes
PROBE_SIZE = 32  # its width and height
SCENE_THRESHOLD = 24.0  # mean absolute difference (0-255) between probes that marks a cut ...
HISTOGRAM_THRESHOLD = 0.4  # ... when this share of the pixels also moved to other brightness bins
HISTOGRAM_BINS = 16
MIN_SCENE_GAP_S = 0.5  # a cut closer than this to the last moment takes no moment of its own
KEYFRAME_MODE_S = 1.0  # from this interval on, decode keyframes only if they come that often
KEYFRAME_PROBE_PACKETS = 3000  # packets read (not decoded) to learn how often keyframes come
DECODE_BUDGET_S = 900.0  # wall-clock seconds a video may take to decode
MAX_DECODED_FRAMES = 2_000_000  # frames decoded at most (a day of 24 fps is 2,073,600)
MAX_DURATION_S = 24 * 3600.0  # a header claiming more is taken for damaged
MAX_SIDE = 16384  # pixels; beyond it a header is taken for damaged
MAX_FPS = 1000.0
CHECK_EVERY = 64  # frames between looks at the clock
DECODE_THREADS = 2  # frame threads per decoder: more multiplies the frames it holds
SEEK_FRAMES = 1200  # frames decoded at most after a seek, to reach a moment from its keyframe


@dataclass(frozen=True)
class Moment:
    """One sampled frame: its time in the video and its pixels for the model."""

    timestamp: float  # seconds from the start
    pixels: np.ndarray  # uint8 (height, width, 3), resized and cropped by the transform
    scene: bool  # taken at a scene change (else by the interval)


@dataclass(frozen=True)
class DecodedVideo:
    """A decoded video: its facts and its moments (at least one)."""

    path: str
    hash: str
    size: int
    width: int  # as displayed, after the rotation in its metadata
    height: int
    format: str  # MP4, MOV, MKV, WEBM, ... (from the extension; the container is ffmpeg's guess)
    codec: str
    duration: float  # seconds: the header's, else the last frame's time
    fps: float | None
    taken_at: datetime | None
    moments: tuple[Moment, ...]


@dataclass(frozen=True)
class Sampling:
    """How moments are chosen; see the module docstring."""

    interval: float = DEFAULT_INTERVAL_S
    max_frames: int = DEFAULT_MAX_FRAMES
    budget_s: float = DECODE_BUDGET_S

    def __post_init__(self) -> None:
        if not (self.interval > 0 and self.max_frames >= 1):
            raise ValueError("interval must be above 0 and max_frames at least 1")


def is_video(path: str) -> bool:
    """True for a file clipdex reads as a video (by its extension)."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def decode_media(
    path: str, transform: ImageTransform, max_pixels: int, sampling: Sampling | None = None
) -> Decoded | DecodedVideo | DecodeFailed:
    """An image (pipeline.ingest.decode) or a video, by the file's extension; never raises."""
    if is_video(path):
        return decode_video(path, transform, max_pixels, sampling or Sampling())
    return decode_file(path, transform, max_pixels)


def decode_video(
    path: str, transform: ImageTransform, max_pixels: int, sampling: Sampling
) -> DecodedVideo | DecodeFailed:
    """Hash a video file and sample its moments; never raises for a bad file."""
    hashed = file_hash(path)
    if isinstance(hashed, DecodeFailed):
        return DecodeFailed(path, hashed.reason + "; check that the file exists and is readable")
    digest, size = hashed
    if size == 0:
        return DecodeFailed(path, "empty file (0 bytes)")
    try:
        source: Any = open_binary(path) if is_uri(path) else path
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            return _decode(path, container, digest, size, transform, max_pixels, sampling)
    except av.error.InvalidDataError as exc:
        return DecodeFailed(path, f"not a video clipdex can read, or truncated (ffmpeg: {_ffmpeg(exc)})")
    except (av.error.DecoderNotFoundError, av.error.PatchWelcomeError) as exc:
        return DecodeFailed(path, f"unsupported video codec (ffmpeg: {_ffmpeg(exc)}); convert it to H.264")
    except av.error.FFmpegError as exc:
        return DecodeFailed(path, f"corrupt or truncated video (ffmpeg: {_ffmpeg(exc)})")
    except OSError as exc:
        return DecodeFailed(path, f"cannot read: {exc.strerror or exc}; check that the file exists and is readable")
    except MemoryError:
        return DecodeFailed(path, "out of memory while decoding the video; lower --workers")
    except Exception as exc:  # a decoder bug must not stop the batch
        return DecodeFailed(path, f"video decoder error {type(exc).__name__}: {first_line(exc)}")


class _Failed(Exception):
    """A reason to give up on this video (turned into a DecodeFailed)."""


def _decode(
    path: str,
    container: Any,
    digest: str,
    size: int,
    transform: ImageTransform,
    max_pixels: int,
    sampling: Sampling,
) -> DecodedVideo | DecodeFailed:
    if not container.streams.video:
        kinds = "audio only" if container.streams.audio else "no streams ffmpeg can read"
        return DecodeFailed(path, f"no video stream ({kinds})")
    stream = container.streams.video[0]
    codec = stream.codec_context.name or "unknown"
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width <= 0 or height <= 0 or width > MAX_SIDE or height > MAX_SIDE:
        return DecodeFailed(path, f"the header gives a frame of {width}x{height} pixels (a damaged header?)")
    if width * height > max_pixels:
        return DecodeFailed(
            path,
            f"{width}x{height} frames are {width * height / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP cap; "
            "raise it with --max-pixels",
        )
    duration = _duration(container, stream)
    if duration is not None and duration > MAX_DURATION_S:
        return DecodeFailed(
            path,
            f"the header says it lasts {duration / 3600:.0f} h, over the {MAX_DURATION_S / 3600:g} h limit "
            "(a damaged header?)",
        )
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate and 0 < float(rate) <= MAX_FPS else None
    interval = sampling.interval
    if duration:
        interval = max(interval, duration / sampling.max_frames)
    keyframes = interval >= KEYFRAME_MODE_S and _keyframes_every(container, stream, interval)
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = DECODE_THREADS
    # Frames no other frame refers to (most B-frames) are not needed for an every-few-frames sample.
    stream.codec_context.skip_frame = "NONKEY" if keyframes else "NONREF"
    try:
        moments, last, rotation = _sample(container, stream, transform, interval, sampling, fps)
    except _Failed as exc:
        return DecodeFailed(path, str(exc))
    if not moments:
        return DecodeFailed(path, "no frame could be decoded (truncated or corrupt video)")
    rotated = rotation % 180 == 90  # a phone held upright
    return DecodedVideo(
        path=path,
        hash=digest,
        size=size,
        width=height if rotated else width,
        height=width if rotated else height,
        format=os.path.splitext(path)[1][1:].upper() or str(container.format.name).upper(),
        codec=codec,
        duration=round(duration if duration else last, 3),
        fps=round(fps, 3) if fps else None,
        taken_at=_creation_time(container.metadata.get("creation_time") or stream.metadata.get("creation_time")),
        moments=tuple(moments),
    )


def _sample(
    container: Any,
    stream: Any,
    transform: ImageTransform,
    interval: float,
    sampling: Sampling,
    fps: float | None,
) -> tuple[list[Moment], float, int]:
    """The moments of a stream, the time of its last decoded frame, and the rotation (degrees)
    its frames are shown with."""
    started = time.monotonic()
    moments: list[Moment] = []
    last_probe_t = -1e9
    last_probe: np.ndarray | None = None
    last_moment_t = -1e9
    t = 0.0
    rotation = 0
    for n, frame in enumerate(container.decode(stream)):
        if n % CHECK_EVERY == 0 and n:
            if time.monotonic() - started > sampling.budget_s:
                raise _Failed(
                    f"decoding took longer than {sampling.budget_s:g} s (at {_clock(t)}; a stream that never ends?)"
                )
            if n >= MAX_DECODED_FRAMES:
                raise _Failed(f"over {MAX_DECODED_FRAMES:,} frames (a stream that never ends?)")
        t = float(frame.time) if frame.time is not None else (n / fps if fps else float(n))
        if t > MAX_DURATION_S:
            raise _Failed(f"frames run past {MAX_DURATION_S / 3600:g} h (a stream that never ends?)")
        scene = False
        if t - last_probe_t >= PROBE_S or frame.key_frame:
            probe = frame.reformat(width=PROBE_SIZE, height=PROBE_SIZE, format="gray").to_ndarray().astype(np.int16)
            if last_probe is not None:
                scene = _is_cut(last_probe, probe)
            last_probe, last_probe_t = probe, t
        due = t - last_moment_t >= interval or (scene and t - last_moment_t >= MIN_SCENE_GAP_S)
        if not due:
            continue
        timestamp = round(max(t, 0.0), 3)
        if moments and timestamp <= moments[-1].timestamp:
            continue  # a frame stamped before 0 or out of order: a moment's time must be its own
        if not moments:
            rotation = int(getattr(frame, "rotation", 0) or 0) % 360
        moments.append(Moment(timestamp, _pixels(frame, transform), scene))
        last_moment_t = t
        if len(moments) > sampling.max_frames:
            # Spread over the whole video without knowing its length: keep every other one.
            moments = moments[::2]
            interval *= 2
    return moments, t, rotation


def _is_cut(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether two grayscale probes show different scenes: far apart pixel by pixel, and in their
    histograms of brightness (which a pan or a moving subject leaves about as it was)."""
    if float(np.abs(after - before).mean()) <= SCENE_THRESHOLD:
        return False
    shift = 8 - HISTOGRAM_BINS.bit_length() + 1  # 256 levels into HISTOGRAM_BINS bins
    counts = [np.bincount((p >> shift).ravel(), minlength=HISTOGRAM_BINS) for p in (before, after)]
    moved = float(np.abs(counts[0] - counts[1]).sum()) / (2 * before.size)
    return moved > HISTOGRAM_THRESHOLD


def _pixels(frame: Any, transform: ImageTransform) -> np.ndarray:
    """A frame as the model's input, resized exactly as an image is (after a cheap first shrink)."""
    width, height = frame.width, frame.height
    draft_w, draft_h = transform.draft_size(width, height)
    # Like a JPEG's DCT draft: swscale shrinks a 4K frame to twice the final size (never below it),
    # then Pillow does the same resize and crop as for a photo.
    if width > 2 * draft_w and height > 2 * draft_h:
        frame = frame.reformat(width=2 * draft_w, height=2 * draft_h, format="rgb24", interpolation="AREA")
    image = frame.to_image()
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    if rotation:
        image = image.rotate(rotation, expand=True)
    pixels: np.ndarray = transform.to_pixels(image if image.mode == "RGB" else image.convert("RGB"))
    return pixels


def frame_at(path: str, seconds: float, size: int, max_pixels: int) -> Image.Image:
    """The frame shown at `seconds` (a moment's thumbnail), at most size pixels wide and high:
    a seek to the keyframe before it, then at most SEEK_FRAMES frames decoded; raises OSError."""
    try:
        source: Any = open_binary(path) if is_uri(path) else path
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise OSError("no video stream")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width * height > max_pixels:
                raise OSError(f"{width}x{height} frames are over the {max_pixels:,}-pixel cap or damaged")
            if seconds > 0 and stream.time_base:
                container.seek(int(seconds / stream.time_base), stream=stream, backward=True, any_frame=False)
            chosen = None
            for n, frame in enumerate(container.decode(stream)):
                chosen = frame
                if n >= SEEK_FRAMES or frame.time is None or frame.time >= seconds - 1e-3:
                    break
            if chosen is None:
                raise OSError("no frame could be decoded")
            image: Image.Image = chosen.to_image()
            rotation = int(getattr(chosen, "rotation", 0) or 0) % 360
    except av.error.FFmpegError as exc:
        raise OSError(_ffmpeg(exc)) from exc
    if rotation:
        image = image.rotate(rotation, expand=True)
    image.thumbnail((size, size))
    return image


def _duration(container: Any, stream: Any) -> float | None:
    """Seconds, from the stream's header or else the container's; None when neither says."""
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return seconds
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    return None


def _keyframes_every(container: Any, stream: Any, interval: float) -> bool:
    """Whether keyframes come at least every `interval` seconds, judged from the first packets
    (read, not decoded); the container is rewound either way."""
    keys: list[float] = []
    try:
        for n, packet in enumerate(container.demux(stream)):
            if n >= KEYFRAME_PROBE_PACKETS:
                break
            if packet.is_keyframe and packet.pts is not None and packet.time_base:
                keys.append(float(packet.pts * packet.time_base))
    finally:
        container.seek(0)
    gaps = np.diff(keys) if len(keys) > 1 else np.array([np.inf])
    return bool(len(keys) > 2 and gaps.max() <= interval)


def _creation_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def _ffmpeg(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or first_line(exc)
    return str(text).rstrip(".")


def _clock(seconds: float) -> str:
    whole = int(seconds)
    minutes = f"{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 3600}:{minutes}" if whole >= 3600 else minutes
