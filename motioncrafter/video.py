"""Video IO: decode and sample reference clips, write MP4 / GIF / PNG grids.

Decoding is decord's; writing is PyAV (H.264 MP4) and Pillow (GIF, PNG). Every
source and destination is a local path or any fsspec URI (see `storage`); frames
are uint8 arrays shaped (T, H, W, 3).

Whatever goes wrong with an input video is raised as a `VideoError` that names the
URI and the reason, never as a raw decoder exception.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence

import av
import decord
import numpy as np
from PIL import Image

from motioncrafter import storage
from motioncrafter.storage import URI

SAMPLINGS = ("uniform", "stride")
GRID_BACKGROUND = 255  # white between the cells of a frame grid


# --------------------------------------------------------------------------- errors


class VideoError(ValueError):
    """A video that cannot give what was asked of it; `uri` says which, `reason` why."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(uri, reason)  # both in args, so the error pickles (Ray ships it between processes)
        self.uri = uri
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason}"


class VideoNotFound(VideoError):
    """Nothing at the URI."""


class EmptyVideoFile(VideoError):
    """A file of zero bytes."""


class NotAVideo(VideoError):
    """A file in no video container format, or one without a video stream."""


class CorruptVideo(VideoError):
    """A video container that cannot be opened or decoded (truncated, damaged)."""


class VideoTooShort(VideoError):
    """Fewer frames in the window than the sampling needs."""


class InvalidWindow(VideoError):
    """A [start_sec, end_sec) window that is empty, inverted or outside the video."""


# --------------------------------------------------------------------------- reading


def read_video(
    source: URI | bytes,
    num_frames: int = 8,
    height: int = 32,
    width: int = 32,
    sampling: str = "uniform",
    stride: int = 1,
    start_sec: float | None = None,
    end_sec: float | None = None,
) -> np.ndarray:
    """`num_frames` frames of a video, resized and centre-cropped: (T, height, width, 3) uint8.

    `source` is a local path, an fsspec URI or the file's bytes; the whole file is
    read into memory (decord reads file objects whole anyway; reference clips are
    seconds long). The frames come from the window [start_sec, end_sec) (default:
    the whole video; frame i is at i / fps):
    - "uniform": `num_frames` frames spread evenly from the window's first frame to its last;
    - "stride": every `stride`-th frame from the window's first, `num_frames` of them.
    Each frame is scaled, keeping its aspect, until its short side covers the target,
    then cropped to (height, width) around its centre.

    Raises a `VideoError` subclass for a video that cannot give these frames, a
    plain ValueError for impossible arguments, and OSError (naming the URI) when
    storage still fails after its retries.
    """
    _check_request(num_frames, height, width, sampling, stride)
    uri, data = _fetch(source)
    reader = _open(uri, data)
    window = _window(uri, len(reader), reader.get_avg_fps(), start_sec, end_sec)
    indices = _sample(uri, window, num_frames, sampling, stride)
    return np.stack([_fit(_decode(uri, reader, i), height, width) for i in indices])


def video_bytes_hash(data: bytes) -> str:
    """Content address of a video file (sha256, hex), for caches keyed by content."""
    return hashlib.sha256(data).hexdigest()


def _check_request(num_frames: int, height: int, width: int, sampling: str, stride: int) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {SAMPLINGS}")
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width), ("stride", stride)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _fetch(source: URI | bytes) -> tuple[str, bytes]:
    """(how errors name the source, its bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        uri = f"<{len(data)} bytes>"
    else:
        uri = storage.redact(source)
        try:
            data = storage.read_bytes(source)
        except (FileNotFoundError, IsADirectoryError) as err:
            raise VideoNotFound(uri, "no such file") from err
    if not data:
        raise EmptyVideoFile(uri, "empty file (0 bytes)")
    return uri, data


def _open(uri: str, data: bytes) -> decord.VideoReader:
    try:
        return decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
    except Exception as err:  # decord raises DECORDError, RuntimeError or AssertionError for bad input
        if not _is_video_container(data):
            raise NotAVideo(uri, "not a video file (unknown format)") from err
        if not _has_video_stream(data):
            raise NotAVideo(uri, "no video stream") from err
        raise CorruptVideo(uri, f"cannot open: corrupt or truncated ({_decoder_message(err)})") from err


# Leading bytes of the containers reference clips come in: they tell a damaged
# video from something that never was one, once decord has refused both.
_CONTAINER_MAGIC = (
    (4, (b"ftyp", b"moov", b"mdat", b"wide", b"free")),  # MP4, MOV, M4V, 3GP
    (0, (b"\x1a\x45\xdf\xa3",)),  # Matroska, WebM
    (8, (b"AVI ",)),  # AVI (RIFF)
    (0, (b"FLV", b"OggS", b"\x00\x00\x01\xba")),  # FLV, Ogg, MPEG program stream
)


def _is_video_container(data: bytes) -> bool:
    return any(data[offset:].startswith(magics) for offset, magics in _CONTAINER_MAGIC)


def _has_video_stream(data: bytes) -> bool:
    try:
        with av.open(io.BytesIO(data)) as container:
            return bool(container.streams.video)
    except av.FFmpegError:
        return True  # unparseable: not known to lack one


def _decoder_message(err: Exception) -> str:
    """The decoder's message without decord's "[time] file.cc:line: " prefix."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)[:200]


def _window(uri: str, count: int, fps: float, start_sec: float | None, end_sec: float | None) -> range:
    """Indices of the frames that start inside [start_sec, end_sec)."""
    if start_sec is None and end_sec is None:
        return range(count)  # needs no fps, which broken metadata may lack
    if not fps > 0:
        raise CorruptVideo(uri, f"no frame rate (got {fps}), so a window in seconds cannot be placed")
    duration = count / fps
    start = 0.0 if start_sec is None else start_sec
    end = duration if end_sec is None else end_sec
    if start < 0:
        raise InvalidWindow(uri, f"start_sec {start} is negative")
    if start >= duration:
        raise InvalidWindow(uri, f"start_sec {start} is beyond the end of the video ({duration:.3f} s)")
    if end <= start:
        raise InvalidWindow(uri, f"empty window: start_sec {start} >= end_sec {end_sec}")
    # a frame whose start lies on the boundary up to rounding belongs to the window
    window = range(math.ceil(start * fps - 1e-6), min(count, math.ceil(end * fps - 1e-6)))
    if not window:
        raise InvalidWindow(uri, f"window [{start}, {end}) s holds no frame at {fps:g} fps")
    return window


def _sample(uri: str, window: range, num_frames: int, sampling: str, stride: int) -> list[int]:
    needed = num_frames if sampling == "uniform" else stride * (num_frames - 1) + 1
    if len(window) < needed:
        how = f"{num_frames} frames" if sampling == "uniform" else f"{num_frames} frames at stride {stride}"
        raise VideoTooShort(uri, f"{len(window)} frames in the window, {how} need {needed}")
    if sampling == "uniform":
        return np.linspace(window.start, window.stop - 1, num_frames).round().astype(int).tolist()
    return list(window[: needed : stride])


def _decode(uri: str, reader: decord.VideoReader, index: int) -> np.ndarray:
    """Frame `index` as (H, W, 3) uint8."""
    try:
        frame = reader[index].asnumpy()
    except Exception as err:  # decord's error types, as in _open
        raise CorruptVideo(uri, f"cannot decode frame {index} ({_decoder_message(err)})") from err
    # decord 0.6 reads the frame's padded rows as extra channels for some narrow
    # widths (16, 24, 48, 72 -> (H, W, 4)): drop the padding. Frame by frame, since
    # get_batch fails outright on those widths.
    h, w, c = frame.shape
    return frame.reshape(h, w * c)[:, : w * 3].reshape(h, w, 3)


def _fit(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale keeping the aspect until the short side covers (height, width); crop the centre."""
    h, w = frame.shape[:2]
    scale = min(w / width, h / height)  # source pixels per target pixel
    left, top = (w - width * scale) / 2, (h - height * scale) / 2
    box = (left, top, left + width * scale, top + height * scale)
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC, box=box))


# --------------------------------------------------------------------------- writing


def write_mp4(frames: np.ndarray, uri: URI, fps: int = 8, crf: int = 18) -> None:
    """Write (T, H, W, 3) uint8 frames as H.264 (yuv420p) MP4 to a path or fsspec URI.

    yuv420p needs even sizes: an odd height or width is padded by one row or column
    repeating the edge. `crf` is x264's quality (lower is better; 18 is near lossless).
    """
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's buffered frames
    storage.write_bytes(uri, buffer.getvalue())


def write_gif(frames: np.ndarray, uri: URI, fps: int = 8) -> None:
    """Write (T, H, W, 3) uint8 frames as a GIF that loops forever.

    GIF stores delays in 1/100 s, so the frame rate is rounded to that; Pillow merges
    identical consecutive frames into one longer frame.
    """
    images = [Image.fromarray(frame) for frame in _check_frames(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    storage.write_bytes(uri, buffer.getvalue())


def frame_grid(videos: Sequence[np.ndarray], columns: int | None = None, pad: int = 2) -> np.ndarray:
    """One image of several videos: a row per video, a column per frame, `pad` pixels
    of white between and around the cells. (H', W', 3) uint8, ready for `write_png`.

    `columns` frames are shown per video, spread evenly over it (default: as many as
    the longest video has). The videos must share their frame size.
    """
    videos = [_check_frames(video) for video in videos]
    if not videos:
        raise ValueError("frame_grid needs at least one video")
    sizes = {video.shape[1:3] for video in videos}
    if len(sizes) > 1:
        raise ValueError(f"frame_grid needs videos of one frame size, got {sorted(sizes)}")
    (h, w), = sizes
    columns = columns or max(len(video) for video in videos)
    grid = np.full((len(videos) * (h + pad) + pad, columns * (w + pad) + pad, 3), GRID_BACKGROUND, np.uint8)
    for row, video in enumerate(videos):
        picks = np.linspace(0, len(video) - 1, columns).round().astype(int)
        for column, frame in enumerate(video[picks]):
            top, left = pad + row * (h + pad), pad + column * (w + pad)
            grid[top : top + h, left : left + w] = frame
    return grid


def write_png(image: np.ndarray, uri: URI) -> None:
    """Write an (H, W, 3) or (H, W) uint8 image as PNG to a path or fsspec URI."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 image, got {image.shape} {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    storage.write_bytes(uri, buffer.getvalue())


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected frames as (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    return frames
