"""Video IO on videos whose frames say which frame they are (brightness = 10 x index)."""

from __future__ import annotations

import io
import pickle
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from motioncrafter import storage
from motioncrafter.toyworld.world import ClipSpec, render
from motioncrafter.video import (
    CorruptVideo,
    EmptyVideoFile,
    InvalidWindow,
    NotAVideo,
    VideoError,
    VideoNotFound,
    VideoTooShort,
    frame_grid,
    read_video,
    video_bytes_hash,
    write_gif,
    write_mp4,
    write_png,
)

FPS = 8
LENGTH = 24  # frames: 3 s at 8 fps


def counting_frames(length: int = LENGTH, height: int = 32, width: int = 32) -> np.ndarray:
    """Frame i is uniformly grey at 10 * i, so a decoded frame tells its index."""
    return np.stack([np.full((height, width, 3), 10 * i, np.uint8) for i in range(length)])


def indices_of(frames: np.ndarray) -> list[int]:
    return (frames.reshape(len(frames), -1).mean(axis=1) / 10).round().astype(int).tolist()


@pytest.fixture(scope="module")
def counting_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "counting.mp4"
    write_mp4(counting_frames(), path, fps=FPS)
    return path


def memory_uri(name: str) -> str:
    return f"memory://test-video-{uuid.uuid4().hex}/{name}"


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "memory", "file"])
def test_reads_from_every_kind_of_source(counting_mp4: Path, kind: str) -> None:
    data = counting_mp4.read_bytes()
    if kind == "memory":
        source = memory_uri("clip.mp4")
        storage.write_bytes(source, data)
    else:
        source = {"path": counting_mp4, "str": str(counting_mp4), "bytes": data, "file": counting_mp4.as_uri()}[kind]
    frames = read_video(source, num_frames=4)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == [0, 8, 15, 23]


# --------------------------------------------------------------------------- sampling


def test_uniform_sampling_spans_first_to_last_frame(counting_mp4: Path) -> None:
    assert indices_of(read_video(counting_mp4, num_frames=8)) == [0, 3, 7, 10, 13, 16, 20, 23]
    assert indices_of(read_video(counting_mp4, num_frames=LENGTH)) == list(range(LENGTH))


def test_stride_sampling_takes_every_nth_frame_from_the_start(counting_mp4: Path) -> None:
    assert indices_of(read_video(counting_mp4, num_frames=5, sampling="stride", stride=3)) == [0, 3, 6, 9, 12]
    assert indices_of(read_video(counting_mp4, num_frames=4, sampling="stride")) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("start_sec", "end_sec", "sampling", "stride", "expected"),
    [
        (1.0, 2.0, "uniform", 1, [8, 9, 10, 11, 12, 13, 14, 15]),  # frames 8..15 start in [1 s, 2 s)
        (0.5, None, "stride", 2, [4, 6, 8, 10, 12, 14, 16, 18]),
        (None, 1.0, "uniform", 1, [0, 1, 2, 3, 4, 5, 6, 7]),
        (2.0, 10.0, "uniform", 1, [16, 17, 18, 19, 20, 21, 22, 23]),  # end clipped to the video
    ],
)
def test_window_restricts_the_frames(counting_mp4, start_sec, end_sec, sampling, stride, expected) -> None:
    frames = read_video(counting_mp4, 8, sampling=sampling, stride=stride, start_sec=start_sec, end_sec=end_sec)
    assert indices_of(frames) == expected


# --------------------------------------------------------------------------- resize and crop


def stripes(height: int, width: int) -> np.ndarray:
    """Two frames: red left quarter, green middle half, blue right quarter (of the long side)."""
    frame = np.zeros((height, width, 3), np.uint8)
    if width >= height:
        q = width // 4
        frame[:, :q, 0], frame[:, q : width - q, 1], frame[:, width - q :, 2] = 255, 255, 255
    else:
        q = height // 4
        frame[:q, :, 0], frame[q : height - q, :, 1], frame[height - q :, :, 2] = 255, 255, 255
    return np.stack([frame, frame])


@pytest.mark.parametrize(
    ("size", "target", "shares"),
    [
        ((32, 64), (32, 32), (0, 1, 0)),  # the centre square is all green
        ((64, 32), (16, 16), (0, 1, 0)),  # tall: the same, scaled down
        ((64, 128), (32, 32), (0, 1, 0)),
        ((32, 64), (16, 24), (1 / 6, 2 / 3, 1 / 6)),  # a 48 x 32 centre crop keeps 8 columns of each end
        ((32, 64), (16, 32), (1 / 4, 1 / 2, 1 / 4)),  # same aspect: the whole frame, scaled
    ],
)
def test_resize_covers_then_crops_the_centre(tmp_path: Path, size, target, shares) -> None:
    path = tmp_path / "stripes.mp4"
    write_mp4(stripes(*size), path)
    frames = read_video(path, num_frames=2, height=target[0], width=target[1])
    assert frames.shape == (2, *target, 3)
    np.testing.assert_allclose(frames.reshape(-1, 3).mean(axis=0) / 255, shares, atol=0.05)


# --------------------------------------------------------------------------- bad input


def audio_only_mp4() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_inputs_raise_typed_errors_naming_the_uri(tmp_path: Path, counting_mp4: Path) -> None:
    mp4 = counting_mp4.read_bytes()
    files = {
        "empty.mp4": (b"", EmptyVideoFile),
        "notes.mp4": (b"these are my notes, not a video\n" * 20, NotAVideo),
        "still.png": (png_bytes(counting_frames(1)[0]), NotAVideo),
        "audio.mp4": (audio_only_mp4(), NotAVideo),
        "truncated.mp4": (mp4[: len(mp4) // 2], CorruptVideo),
    }
    for name, (data, error) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(error) as caught:
            read_video(path)
        assert caught.value.uri == str(path) and str(path) in str(caught.value), name
    with pytest.raises(VideoNotFound, match="missing.mp4: no such file"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoNotFound, match="memory://"):
        read_video(memory_uri("missing.mp4"))


def test_errors_for_bytes_name_their_size() -> None:
    with pytest.raises(NotAVideo, match=r"<40 bytes>: not a video"):
        read_video(b"0123456789" * 4)
    with pytest.raises(EmptyVideoFile, match=r"<0 bytes>"):
        read_video(b"")


def test_error_messages_hide_signed_query_strings() -> None:
    uri = memory_uri("clip.mp4") + "?X-Amz-Signature=topsecret"
    with pytest.raises(VideoNotFound) as caught:
        read_video(uri)
    assert "topsecret" not in str(caught.value) and "clip.mp4" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "reason"),
    [
        ({"num_frames": 25}, VideoTooShort, "24 frames in the window, 25 frames need 25"),
        ({"num_frames": 6, "sampling": "stride", "stride": 5}, VideoTooShort, "at stride 5 need 26"),
        ({"num_frames": 9, "start_sec": 2.0}, VideoTooShort, "8 frames in the window"),
        ({"start_sec": 2.0, "end_sec": 1.0}, InvalidWindow, "empty window"),
        ({"start_sec": 1.0, "end_sec": 1.0}, InvalidWindow, "empty window"),
        ({"start_sec": 3.0}, InvalidWindow, "beyond the end"),
        ({"start_sec": -1.0}, InvalidWindow, "negative"),
        ({"num_frames": 1, "start_sec": 0.01, "end_sec": 0.1}, InvalidWindow, "holds no frame"),
    ],
)
def test_requests_the_video_cannot_meet(counting_mp4: Path, kwargs, error, reason) -> None:
    with pytest.raises(error) as caught:
        read_video(counting_mp4, **kwargs)
    assert caught.value.uri == str(counting_mp4)
    assert reason in caught.value.reason


@pytest.mark.parametrize("kwargs", [{"sampling": "random"}, {"num_frames": 0}, {"stride": 0}, {"height": 0}])
def test_bad_arguments_are_value_errors(counting_mp4: Path, kwargs) -> None:
    with pytest.raises(ValueError) as caught:
        read_video(counting_mp4, **kwargs)
    assert not isinstance(caught.value, VideoError)


def test_video_errors_survive_pickling() -> None:
    error = VideoTooShort("s3://bucket/clip.mp4", "3 frames in the window, 8 frames need 8")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is VideoTooShort and (copy.uri, copy.reason) == (error.uri, error.reason)
    assert str(copy) == "s3://bucket/clip.mp4: 3 frames in the window, 8 frames need 8"


# --------------------------------------------------------------------------- writers


def test_mp4_round_trip_keeps_a_toyworld_clip() -> None:
    clip = render(ClipSpec(colour="red", shape="circle", background="black", motion="left_to_right"))
    uri = memory_uri("clip.mp4")
    write_mp4(clip.frames, uri)
    frames = read_video(uri, num_frames=len(clip.frames))
    assert np.abs(frames.astype(int) - clip.frames).mean() < 4
    with av.open(io.BytesIO(storage.read_bytes(uri))) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt, stream.average_rate) == ("h264", "yuv420p", 8)


def test_mp4_pads_odd_sizes_to_even(tmp_path: Path) -> None:
    # 47 -> 48 wide is also one of the widths decord 0.6 mis-shapes; read_video must undo that
    blocks = np.random.default_rng(0).integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)[:, :31, :47]
    path = tmp_path / "odd.mp4"
    write_mp4(frames, path)
    decoded = read_video(path, num_frames=3, height=32, width=48)
    assert np.abs(decoded[:, :31, :47].astype(int) - frames).mean() < 8
    assert np.abs(decoded[:, 31, :47].astype(int) - frames[:, 30]).mean() < 8  # the padding repeats the edge


def test_gif_round_trip_loops_forever(tmp_path: Path) -> None:
    frames = counting_frames(6)
    frames[:, 8:16, 8:16] = (230, 30, 30)
    path = tmp_path / "out" / "clip.gif"
    write_gif(frames, path, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.info["loop"] == 0 and gif.info["duration"] == 200
        decoded = []
        for i in range(gif.n_frames):
            gif.seek(i)
            decoded.append(np.asarray(gif.convert("RGB")))
    assert np.abs(np.stack(decoded).astype(int) - frames).max() <= 8


def test_frame_grid_puts_a_video_in_each_row() -> None:
    videos = [counting_frames(4, 8, 10), 255 - counting_frames(4, 8, 10)]
    grid = frame_grid(videos, pad=2)
    assert grid.shape == (2 + 2 * (8 + 2), 2 + 4 * (10 + 2), 3)
    for row, video in enumerate(videos):
        for column, frame in enumerate(video):
            top, left = 2 + row * 10, 2 + column * 12
            np.testing.assert_array_equal(grid[top : top + 8, left : left + 10], frame)
    assert (grid[:2] == 255).all() and (grid[:, 12:14] == 255).all()  # the padding
    uri = memory_uri("grid.png")
    write_png(grid, uri)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri)))), grid)


def test_frame_grid_columns_spread_over_each_video() -> None:
    grid = frame_grid([counting_frames(9, 4, 4)], columns=3, pad=0)
    assert grid.shape == (4, 12, 3)
    assert [int(grid[0, 4 * c, 0]) for c in range(3)] == [0, 40, 80]


def test_writers_reject_frames_of_the_wrong_shape_or_type(tmp_path: Path) -> None:
    for frames in (np.zeros((4, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match="expected frames"):
            write_mp4(frames, tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="one frame size"):
        frame_grid([counting_frames(2, 8, 8), counting_frames(2, 8, 10)])
    assert not (tmp_path / "x.mp4").exists()


def test_video_bytes_hash_addresses_content() -> None:
    assert video_bytes_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert video_bytes_hash(b"abc") != video_bytes_hash(b"abd")
