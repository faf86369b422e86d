"""vljepa_jax.data.media and vljepa_jax.data.video against independent references.

  sample_frame_indices   exact rational formula floor((i + 1/2) * n / T) and hand-worked cases
  decode_image           the arrays the images were written from (PNG exact, JPEG close), hand
                         palette lookup, alpha and grayscale expansion
  decode_video           a plain sequential PyAV decode of the same file, indexed with the
                         sampled indices: equal to the bit; and the frame index painted into
                         each source frame (`media_files.numbered_frames`), read back
  resize_short_side      torch.nn.functional.interpolate (bilinear, antialias) in float64
  center_crop/normalize  NumPy slicing and the written-out formula

Every file is generated here (Pillow, PyAV encoders), so nothing is downloaded.
"""
from __future__ import annotations

import fractions
import io
import math
import pickle
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import media_files as mf
from vljepa_jax.data import media
from vljepa_jax.data import video as video_lib

# A truncated or garbage file must fail fast; this is far above what any of them takes.
PROMPT_SECONDS = 5.0


def _sequential_decode(source) -> np.ndarray:
  """Every frame in order, the plain way: the ground truth `decode_video` must match."""
  with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _expected_indices(num_available: int, num_frames: int) -> list[int]:
  return [math.floor(fractions.Fraction(2 * i + 1, 2) * num_available / num_frames) for i in range(num_frames)]


def _smooth_image(height: int, width: int, seed: int) -> np.ndarray:
  """Smooth colour content (upsampled noise): what lossy codecs keep well."""
  small = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def _reason(call) -> str:
  with pytest.raises(media.BadSample) as info:
    call()
  return info.value.reason


# --- Sampling, text, reasons ----------------------------------------------------------------


def test_sample_frame_indices_matches_exact_formula():
  for n in range(1, 70):
    for t in range(1, 20):
      got = media.sample_frame_indices(n, t)
      assert got.dtype == np.int64
      assert got.tolist() == _expected_indices(n, t), (n, t)
  big = 2**55 + 3  # beyond float64's exact integers: the floor must still be exact
  assert media.sample_frame_indices(big, 3).tolist() == _expected_indices(big, 3)


def test_sample_frame_indices_hand_cases():
  assert media.sample_frame_indices(10, 4).tolist() == [1, 3, 6, 8]
  assert media.sample_frame_indices(300, 4).tolist() == [37, 112, 187, 262]
  assert media.sample_frame_indices(8, 8).tolist() == list(range(8))
  # Shorter than the clip: frames repeat, in order, each used about T / n times.
  assert media.sample_frame_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
  assert media.sample_frame_indices(1, 5).tolist() == [0] * 5


def test_first_to_last_sampling_hand_cases_and_decoding(video_case_bytes):
  """open-vljepa's sampling, `np.linspace(0, n - 1, T, dtype=int)`, worked by hand: both ends included."""
  assert media.sample_frame_indices(10, 4, "first_to_last").tolist() == [0, 3, 6, 9]
  # 299 / 7 = 42.71...: 0, 42.7, 85.4, 128.1, 170.9, 213.6, 256.3, 299
  assert media.sample_frame_indices(300, 8, "first_to_last").tolist() == [0, 42, 85, 128, 170, 213, 256, 299]
  assert media.sample_frame_indices(3, 8, "first_to_last").tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
  assert media.sample_frame_indices(1, 3, "first_to_last").tolist() == [0, 0, 0]
  with pytest.raises(ValueError, match="frame sampling 'middle': expected one of"):
    media.sample_frame_indices(10, 4, "middle")
  # Through decoding: the frames' own painted numbers are the ones asked for.
  clip, _ = media.load_frames(video_case_bytes("mp4-h264-gop10"), 4, crop_size=48, sampling="first_to_last")
  last = VIDEO_FRAMES - 1
  assert mf.frame_indices_of(clip) == [0, last // 3, 2 * last // 3, last]


@pytest.mark.parametrize("num_available,num_frames", [(0, 4), (-3, 4), (4, 0), (4, -1)])
def test_sample_frame_indices_rejects_empty(num_available, num_frames):
  with pytest.raises(ValueError):
    media.sample_frame_indices(num_available, num_frames)


def test_reasons_and_bad_sample():
  assert media.SKIP_REASONS == ("missing_file", "unreadable_media", "truncated_media", "empty_text",
                                "bad_channels", "window_past_end")
  assert media.SHORT_VIDEO not in media.SKIP_REASONS
  error = media.BadSample(media.TRUNCATED_MEDIA, "clip.mp4: cut")
  assert (error.reason, error.detail, str(error)) == ("truncated_media", "clip.mp4: cut",
                                                      "truncated_media: clip.mp4: cut")
  # Grain workers send exceptions across processes.
  copy = pickle.loads(pickle.dumps(error))
  assert (copy.reason, copy.detail, str(copy)) == (error.reason, error.detail, str(error))


def test_check_text():
  assert media.check_text("  a cat on a mat \n", "caption") == "a cat on a mat"
  assert media.check_text(b" bytes from tfds ", "caption") == "bytes from tfds"
  for empty in (None, "", "   \n\t", b"  "):
    with pytest.raises(media.BadSample) as info:
      media.check_text(empty, "query")
    assert (info.value.reason, info.value.detail) == (media.EMPTY_TEXT, "empty query")


def test_media_module_does_not_import_jax():
  code = "import sys, vljepa_jax.data.media; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


# --- Images ---------------------------------------------------------------------------------


def test_is_image_bytes():
  frame = _smooth_image(16, 24, seed=0)
  for fmt in ("jpeg", "png", "gif", "bmp", "webp", "tiff"):
    assert media.is_image_bytes(mf.image_bytes(frame, fmt)), fmt
  frames = mf.numbered_frames(4, 32)
  for extension in (".mp4", ".webm", ".avi"):  # AVI is RIFF too, like WEBP
    assert not media.is_image_bytes(mf.video_bytes(frames, extension)), extension
  assert not media.is_image_bytes(mf.audio_only_bytes())
  assert not media.is_image_bytes(b"")
  assert not media.is_image_bytes(b"hello world, not an image")


def test_decode_image_png_is_exact():
  frame = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  decoded = media.decode_image(mf.image_bytes(frame, "png"))
  assert decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded, frame)


def test_decode_image_jpeg_is_close():
  frame = _smooth_image(48, 64, seed=2)
  decoded = media.decode_image(mf.image_bytes(frame, "jpeg"))
  assert decoded.shape == frame.shape and decoded.dtype == np.uint8
  error = np.abs(decoded.astype(int) - frame)
  assert error.mean() < 1.5 and error.max() <= 12, (error.mean(), error.max())


def test_decode_image_converts_modes_to_rgb():
  rng = np.random.default_rng(3)
  gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
  np.testing.assert_array_equal(media.decode_image(mf.image_bytes(gray, "png")), np.stack([gray] * 3, -1))

  rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)  # alpha dropped, colour kept as stored
  np.testing.assert_array_equal(media.decode_image(mf.image_bytes(rgba, "png")), rgba[..., :3])

  gray_alpha = Image.fromarray(np.stack([gray, gray[::-1]], -1), mode="LA")
  np.testing.assert_array_equal(media.decode_image(mf.image_bytes(gray_alpha, "png")), np.stack([gray] * 3, -1))

  palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
  indices = rng.integers(0, 256, (20, 30), dtype=np.uint8)
  paletted = Image.fromarray(indices, mode="P")
  paletted.putpalette(palette.tobytes())
  np.testing.assert_array_equal(media.decode_image(mf.image_bytes(paletted, "png")), palette[indices])

  # 16-bit grayscale scales to 8 bits (Pillow's own convert would clip everything above 255).
  deep = rng.integers(0, 65536, (20, 30)).astype(np.uint16)
  expected = np.rint(deep / 257.0).astype(np.uint8)
  np.testing.assert_array_equal(media.decode_image(mf.image_bytes(Image.fromarray(deep), "png")),
                                np.stack([expected] * 3, -1))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "bmp", "gif"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_decode_image_truncated(fmt, keep):
  data = mf.image_bytes(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8), fmt)
  assert not ImageFile.LOAD_TRUNCATED_IMAGES  # importing media must not switch it on
  assert _reason(lambda: media.decode_image(data[:int(len(data) * keep)])) == media.TRUNCATED_MEDIA


def test_decode_image_garbage():
  assert _reason(lambda: media.decode_image(b"")) == media.UNREADABLE_MEDIA
  assert _reason(lambda: media.decode_image(b"definitely not an image")) == media.UNREADABLE_MEDIA
  # A valid signature followed by garbage.
  assert _reason(lambda: media.decode_image(b"\x89PNG\r\n\x1a\n" + bytes(200))) in (
      media.UNREADABLE_MEDIA, media.TRUNCATED_MEDIA)


# --- Video ----------------------------------------------------------------------------------

VIDEO_FRAMES = 150
# (extension, writer options): every codec/container the pipeline is likely to meet.
VIDEO_CASES = {
    "mp4-h264-gop10": (".mp4", {"gop": 10}),
    "mp4-h264-default-gop": (".mp4", {}),  # x264's keyint 250: one keyframe in the file
    "mp4-h264-open-gop": (".mp4", {"options": {"x264-params": "keyint=30:min-keyint=30:scenecut=0:open-gop=1"}}),
    "webm-vp9": (".webm", {"gop": 30}),
    "webm-vp8": (".webm", {"codec": "libvpx", "gop": 20}),
    "avi-mpeg4": (".avi", {}),
    "avi-mjpeg": (".avi", {"codec": "mjpeg"}),
    "mkv-h264": (".mkv", {"gop": 25}),
}


@pytest.fixture(scope="module")
def numbered() -> np.ndarray:
  return mf.numbered_frames(VIDEO_FRAMES, 64, height=48)


@pytest.fixture(scope="module")
def video_case_bytes(numbered):
  cache = {}

  def get(case: str) -> bytes:
    if case not in cache:
      extension, options = VIDEO_CASES[case]
      cache[case] = mf.video_bytes(numbered, extension, **options)
    return cache[case]

  return get


def test_numbered_frames_round_trip():
  frames = mf.numbered_frames(300, 64, height=48)
  assert frames.shape == (300, 48, 64, 3) and frames.dtype == np.uint8
  assert mf.frame_indices_of(frames) == list(range(300))
  # The encoding survives a lossy codec (frames through H.264 and back).
  assert mf.frame_indices_of(_sequential_decode(mf.video_bytes(frames, ".mp4"))) == list(range(300))


@pytest.mark.parametrize("case", sorted(VIDEO_CASES))
def test_decode_video_matches_sequential_decode(case, video_case_bytes):
  data = video_case_bytes(case)
  reference = _sequential_decode(data)
  assert len(reference) == VIDEO_FRAMES
  assert mf.frame_indices_of(reference) == list(range(VIDEO_FRAMES))  # the codec kept the numbers
  for num_frames in (1, 5, 8, 16):
    frames, info = video_lib.decode_video(data, num_frames)
    indices = _expected_indices(VIDEO_FRAMES, num_frames)
    assert frames.dtype == np.uint8 and frames.shape == (num_frames, 48, 64, 3)
    np.testing.assert_array_equal(frames, reference[indices], err_msg=f"{case} T={num_frames}")
    assert mf.frame_indices_of(frames) == indices
    assert (info.num_available, info.short) == (VIDEO_FRAMES, False)


@pytest.mark.parametrize("case", ["mp4-h264-gop10", "webm-vp9", "avi-mpeg4"])
def test_decode_video_from_path_equals_bytes(case, video_case_bytes, tmp_path):
  data = video_case_bytes(case)
  path = tmp_path / f"clip{VIDEO_CASES[case][0]}"
  path.write_bytes(data)
  for source in (path, str(path)):
    frames, info = video_lib.decode_video(source, 8)
    np.testing.assert_array_equal(frames, _sequential_decode(data)[_expected_indices(VIDEO_FRAMES, 8)])
    assert info.num_available == VIDEO_FRAMES


def test_decode_video_seeks_instead_of_decoding_everything(tmp_path):
  path = mf.write_video(tmp_path / "long.mp4", mf.numbered_frames(300, 64), gop=30)
  frames, info = video_lib.decode_video(path, 4)
  indices = _expected_indices(300, 4)  # 37, 112, 187, 262
  np.testing.assert_array_equal(frames, _sequential_decode(path)[indices])
  assert mf.frame_indices_of(frames) == indices
  assert info.num_seeks >= 1
  # Each target costs at most the 30 frames from its keyframe (plus B-frame reordering slack).
  assert info.num_decoded <= 4 * 30 + 8, info
  assert info.num_decoded < 300 // 2


def test_decode_video_does_not_reseek_within_one_long_gop(tmp_path):
  # One keyframe for the whole file: every seek lands on frame 0. After the first such seek
  # the reader must decode forward, or it would redo the same frames for every target.
  path = mf.write_video(tmp_path / "one_gop.mp4", mf.numbered_frames(300, 64), gop=300)
  frames, info = video_lib.decode_video(path, 8)
  np.testing.assert_array_equal(frames, _sequential_decode(path)[_expected_indices(300, 8)])
  assert info.num_decoded <= 300 + 40, info


def test_decode_video_retries_seeks_that_land_after_the_target(tmp_path):
  # Open GOPs: after seeking to an I-frame the decoder drops the B-frames shown before it, so
  # a seek for one of those lands past its target and must be retried further back.
  frames = mf.numbered_frames(238, 64)
  path = mf.write_video(tmp_path / "open_gop.mp4", frames,
                        options={"x264-params": "keyint=30:min-keyint=30:scenecut=0:open-gop=1"})
  indices = _expected_indices(238, 4)
  assert indices[:2] == [29, 89]  # the frames just before keyframes 30 and 90
  decoded, info = video_lib.decode_video(path, 4)
  np.testing.assert_array_equal(decoded, _sequential_decode(path)[indices])
  assert info.num_seeks > 4, info  # at least one retry


def test_decode_video_estimated_count_is_checked(numbered, video_case_bytes):
  # WebM stores no frame count: it is estimated from the duration and checked by decoding to
  # the end. A file cut short still names its full duration, so the estimate is wrong and the
  # result must come from the frames that actually exist.
  data = video_case_bytes("webm-vp9")
  with av.open(io.BytesIO(data)) as container:
    assert container.streams.video[0].frames == 0
  for keep in (0.4, 0.75, 0.97):  # the last keeps every target but not the last frames
    cut = data[:int(len(data) * keep)]
    reference = _sequential_decode(cut)
    assert 0 < len(reference) < VIDEO_FRAMES
    frames, info = video_lib.decode_video(cut, 8)
    assert info.num_available == len(reference)
    np.testing.assert_array_equal(frames, reference[_expected_indices(len(reference), 8)])


@pytest.mark.parametrize("extension", [".mp4", ".mkv"])
def test_decode_video_variable_frame_rate(extension):
  # Frame durations cycle 70, 30, 30 ms: frame i is not at i / rate, so timestamps cannot
  # locate frames and the decoder must fall back to counting them.
  frames = mf.numbered_frames(60, 64)
  timestamps = np.cumsum([0] + [70 if i % 3 == 0 else 30 for i in range(59)])
  data = mf.video_bytes(frames, extension, timestamps_ms=timestamps)
  reference = _sequential_decode(data)
  for num_frames in (4, 8):
    decoded, info = video_lib.decode_video(data, num_frames)
    indices = _expected_indices(60, num_frames)
    np.testing.assert_array_equal(decoded, reference[indices])
    assert mf.frame_indices_of(decoded) == indices
    assert info.num_available == 60


def _dropped(slot: int) -> list[int]:
  return [40 * s for s in range(301) if s != slot]


@pytest.mark.parametrize("extension,timestamps_ms", [
    # One frame missing from a 25 fps grid: later frames sit one slot after their index.
    (".mp4", _dropped(50)),  # between the stretches a seeking decoder reads: only the count tells
    (".mkv", _dropped(33)),  # inside the stretch decoded for frame 37: the timestamps jump
    # Frames from 50 on are 0.6 frame late: rounding would put each one slot too far.
    (".mkv", [40 * i + (24 if i >= 50 else 0) for i in range(300)]),
], ids=["mp4-dropped", "mkv-dropped", "mkv-shifted"])
def test_decode_video_irregular_timestamps(extension, timestamps_ms):
  data = mf.video_bytes(mf.numbered_frames(300, 64), extension, gop=30, timestamps_ms=timestamps_ms)
  reference = _sequential_decode(data)
  frames, info = video_lib.decode_video(data, 4)
  indices = _expected_indices(300, 4)
  np.testing.assert_array_equal(frames, reference[indices])
  assert mf.frame_indices_of(frames) == indices
  assert info.num_available == 300


def test_decode_video_index_that_flags_every_frame_as_keyframe():
  # Seeks land on frames that need earlier ones; MPEG-4 Part 2 then decodes them anyway, into
  # garbage. The decoder must notice it did not start on a keyframe and not return that.
  data = mf.video_bytes(mf.numbered_frames(150, 64), ".avi", gop=50, flag_all_keyframes=True)
  reference = _sequential_decode(data)
  for num_frames in (4, 8):
    frames, _ = video_lib.decode_video(data, num_frames)
    np.testing.assert_array_equal(frames, reference[_expected_indices(150, num_frames)])


def test_decode_video_short_video_repeats_frames(tmp_path):
  path = mf.write_video(tmp_path / "short.mp4", mf.numbered_frames(3, 64))
  frames, info = video_lib.decode_video(path, 8)
  indices = [0, 0, 0, 1, 1, 2, 2, 2]
  np.testing.assert_array_equal(frames, _sequential_decode(path)[indices])
  assert mf.frame_indices_of(frames) == indices
  assert (info.num_available, info.short) == (3, True)
  assert info.num_decoded == 3  # each distinct frame decoded once

  clip, notes = media.load_frames(path, 8, crop_size=64)
  assert notes == {media.SHORT_VIDEO: 1}
  np.testing.assert_array_equal(clip, frames)


def test_decode_video_resizes_with_ffmpeg(video_case_bytes):
  data = video_case_bytes("mp4-h264-gop10")
  reference = _sequential_decode(data)
  for short_side, shape in ((24, (24, 32)), (30, (30, 40)), (96, (96, 128))):  # from 48x64
    frames, _ = video_lib.decode_video(data, 6, short_side=short_side)
    assert frames.shape == (6, *shape, 3)
    indices = _expected_indices(VIDEO_FRAMES, 6)
    assert mf.frame_indices_of(frames) == indices
    # swscale resizes in the same pass as its YUV -> RGB conversion, so it differs from
    # resizing the RGB frames (torch, float) by the chroma interpolation: measured mean <= 1.0,
    # 99th percentile <= 4 on these sharp-edged frames.
    diff = np.abs(frames.astype(int) - _torch_resize(reference[indices], *shape))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 5, (short_side, diff.mean())


@pytest.mark.parametrize("keep", [0.5, 0.1])
@pytest.mark.parametrize("faststart", [False, True])
def test_decode_video_truncated_mp4(keep, faststart, numbered):
  data = mf.video_bytes(numbered, ".mp4", gop=10, faststart=faststart)
  start = time.monotonic()
  reason = _reason(lambda: video_lib.decode_video(data[:int(len(data) * keep)], 8))
  assert time.monotonic() - start < PROMPT_SECONDS
  # Without faststart the index sits at the end, so a cut file does not even open; with it
  # the file opens and fails while decoding (or ends before the frames it declares).
  assert reason in (media.TRUNCATED_MEDIA, media.UNREADABLE_MEDIA)
  if faststart and keep == 0.5:
    assert reason == media.TRUNCATED_MEDIA


@pytest.mark.parametrize("num_frames", [8, 16])
def test_decode_video_cut_at_packet_boundary(numbered, num_frames):
  # Cut exactly where frame 120's data starts: no decoder error at all, the stream just ends
  # 30 frames before the count its index declares (a plain decode returns 120 frames).
  # T=16 meets the end while decoding forward, T=8 after a seek (and then in the count pass).
  data = mf.video_bytes(numbered, ".mp4", gop=10, faststart=True)
  with av.open(io.BytesIO(data)) as container:
    cut = data[:container.streams.video[0].index_entries[120].pos]
  assert len(_sequential_decode(cut)) == 120
  start = time.monotonic()
  assert _reason(lambda: video_lib.decode_video(cut, num_frames)) == media.TRUNCATED_MEDIA
  assert time.monotonic() - start < PROMPT_SECONDS


def test_decode_video_unreadable_and_missing(tmp_path):
  garbage = np.random.default_rng(5).bytes(20_000)
  for data in (b"", garbage, b"\x00" * 5000, mf.audio_only_bytes()):
    start = time.monotonic()
    assert _reason(lambda: video_lib.decode_video(data, 4)) == media.UNREADABLE_MEDIA
    assert time.monotonic() - start < PROMPT_SECONDS
  with pytest.raises(media.BadSample, match="no video stream"):
    video_lib.decode_video(mf.audio_only_bytes(), 4)
  missing = tmp_path / "nope.mp4"
  assert _reason(lambda: video_lib.decode_video(missing, 4)) == media.MISSING_FILE
  assert _reason(lambda: video_lib.decode_video(str(missing), 4)) == media.MISSING_FILE
  (tmp_path / "junk.mp4").write_bytes(garbage)
  assert _reason(lambda: video_lib.decode_video(tmp_path / "junk.mp4", 4)) == media.UNREADABLE_MEDIA


# --- Geometry and normalisation --------------------------------------------------------------


def _torch_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
  y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                                      align_corners=False)
  return np.clip(np.rint(y.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height,width,size", [
    (24, 32, 48),  # upsampling 2x
    (30, 40, 64),  # upsampling, non-integer factor
    (96, 128, 48),  # downsampling 2x
    (100, 150, 64),  # downsampling 1.56x
    (128, 128, 32),  # downsampling 4x
    (50, 40, 23),  # portrait
])
def test_resize_short_side_matches_torch_antialiased_bilinear(height, width, size):
  rng = np.random.default_rng(height * width + size)
  frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)  # noise: the hardest case
  out = media.resize_short_side(frames, size)
  short, long = min(height, width), max(height, width)
  out_long = math.floor(fractions.Fraction(long * size, short) + fractions.Fraction(1, 2))
  expected_shape = (size, out_long) if height <= width else (out_long, size)
  assert out.shape == (2, *expected_shape, 3) and out.dtype == np.uint8
  # Pillow and torch apply the same triangle filter, widened by the scale factor when
  # shrinking. Pillow works in fixed point and rounds to uint8 between its horizontal and
  # vertical passes, torch stays in float: measured, they never differ by more than 1.
  diff = np.abs(out.astype(int) - _torch_resize(frames, *expected_shape))
  assert diff.max() <= 1, diff.max()
  assert diff.mean() < 0.35


def test_resize_short_side_shapes_and_identity():
  frame = np.zeros((1, 480, 640, 3), np.uint8)
  assert media.resize_short_side(frame, 292).shape == (1, 292, 389, 3)  # 389.33 rounds down
  assert media.resize_short_side(frame.transpose(0, 2, 1, 3), 292).shape == (1, 389, 292, 3)
  assert media.resize_short_side(np.zeros((1, 2, 3, 3), np.uint8), 3).shape == (1, 3, 5, 3)  # 4.5 rounds up
  already = np.random.default_rng(6).integers(0, 256, (3, 32, 57, 3), dtype=np.uint8)
  assert media.resize_short_side(already, 32) is already
  with pytest.raises(ValueError):
    media.resize_short_side(np.zeros((32, 32, 3), np.uint8), 16)  # not (N, H, W, 3)


def test_center_crop():
  frames = np.random.default_rng(7).integers(0, 256, (2, 7, 10, 3), dtype=np.uint8)
  np.testing.assert_array_equal(media.center_crop(frames, 5), frames[:, 1:6, 2:7])
  np.testing.assert_array_equal(media.center_crop(frames, 7), frames[:, :, 1:8])
  assert media.center_crop(frames, 4).shape == (2, 4, 4, 3)
  with pytest.raises(ValueError, match=r"\(2, 7, 10, 3\)"):
    media.center_crop(frames, 8)


def test_normalize():
  frames = np.random.default_rng(8).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
  frames[0, 0, 0] = (0, 0, 0)
  frames[0, 0, 1] = (255, 255, 255)
  out = media.normalize(frames)
  assert out.dtype == np.float32 and out.shape == frames.shape
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out, (frames / 255.0 - mean) / std, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out[0, 0, 0], -mean / std, atol=1e-6)
  np.testing.assert_allclose(out[0, 0, 1], (1 - mean) / std, atol=1e-6)


def test_to_rgb_frames_channels():
  rng = np.random.default_rng(9)
  gray = rng.integers(0, 256, (6, 7), dtype=np.uint8)
  rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
  video = rng.integers(0, 256, (4, 6, 7, 3), dtype=np.uint8)
  np.testing.assert_array_equal(media.to_rgb_frames(gray), np.stack([gray] * 3, -1)[None])
  np.testing.assert_array_equal(media.to_rgb_frames(gray[..., None]), np.stack([gray] * 3, -1)[None])
  np.testing.assert_array_equal(media.to_rgb_frames(rgb), rgb[None])
  np.testing.assert_array_equal(media.to_rgb_frames(video), video)
  np.testing.assert_array_equal(media.to_rgb_frames(video[..., :1]), np.repeat(video[..., :1], 3, -1))
  for bad in (np.zeros((6, 7, 4), np.uint8), np.zeros((4, 6, 7, 2), np.uint8)):
    with pytest.raises(media.BadSample) as info:
      media.to_rgb_frames(bad)
    assert info.value.reason == media.BAD_CHANNELS and str(bad.shape) in info.value.detail
  with pytest.raises(media.BadSample) as info:
    media.to_rgb_frames(rgb.astype(np.float32))
  assert info.value.reason == media.UNREADABLE_MEDIA and "float32" in info.value.detail
  assert _reason(lambda: media.to_rgb_frames(np.zeros((0, 6, 7, 3), np.uint8))) == media.UNREADABLE_MEDIA


# --- load_frames ----------------------------------------------------------------------------


def _pillow_resize_crop(frame: np.ndarray, width: int, height: int, crop: int) -> np.ndarray:
  resized = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
  top, left = (height - crop) // 2, (width - crop) // 2
  return resized[top:top + crop, left:left + crop]


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_load_frames_image_bytes_and_path(fmt, tmp_path):
  image = _smooth_image(40, 60, seed=10)
  data = mf.image_bytes(image, fmt)
  path = mf.write_image(tmp_path / f"image.{fmt}", image, fmt)
  decoded = media.decode_image(data)
  expected = _pillow_resize_crop(decoded, 48, 32, 32)  # short side 40 -> 32, long 60 -> 48
  for source in (data, path, np.asarray(data)):  # the last: bytes as a TFDS source hands them over
    clip, notes = media.load_frames(source, 4, crop_size=32)
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8 and notes == {}
    for frame in clip:
      np.testing.assert_array_equal(frame, expected)


def test_load_frames_video_path_and_bytes(video_case_bytes, tmp_path):
  data = video_case_bytes("mp4-h264-gop10")  # 48x64 frames
  path = tmp_path / "clip.mp4"
  path.write_bytes(data)
  indices = _expected_indices(VIDEO_FRAMES, 8)
  # short_side None: the crop spans the short side, so a 48-crop keeps whole rows.
  clip, notes = media.load_frames(path, 8, crop_size=48)
  assert clip.shape == (8, 48, 48, 3) and notes == {}
  np.testing.assert_array_equal(clip, _sequential_decode(data)[indices][:, :, 8:56])
  resized, _ = video_lib.decode_video(data, 8, short_side=40)  # 40x53, crop at column (53 - 32) // 2
  for source in (path, data):
    clip, notes = media.load_frames(source, 8, crop_size=32, short_side=40)
    assert clip.shape == (8, 32, 32, 3) and notes == {}
    np.testing.assert_array_equal(clip, resized[:, 4:36, 10:42])


def test_load_frames_array():
  rng = np.random.default_rng(11)
  video = rng.integers(0, 256, (10, 40, 50, 3), dtype=np.uint8)
  clip, notes = media.load_frames(video, 4, crop_size=32, short_side=44)  # 40x50 -> 44x55
  indices = _expected_indices(10, 4)
  assert clip.shape == (4, 32, 32, 3) and notes == {}
  for frame, index in zip(clip, indices):
    np.testing.assert_array_equal(frame, _pillow_resize_crop(video[index], 55, 44, 32))

  clip, notes = media.load_frames(video[:3], 8, crop_size=40)  # 3 frames for 8: padded, noted
  assert notes == {media.SHORT_VIDEO: 1}
  np.testing.assert_array_equal(clip, video[[0, 0, 0, 1, 1, 2, 2, 2]][:, :, 5:45])

  gray = rng.integers(0, 256, (40, 40), dtype=np.uint8)  # an image, not a short video
  clip, notes = media.load_frames(gray, 3, crop_size=40)
  assert notes == {}
  np.testing.assert_array_equal(clip, np.broadcast_to(np.stack([gray] * 3, -1), (3, 40, 40, 3)))

  with pytest.raises(media.BadSample) as info:
    media.load_frames(np.zeros((2, 40, 40, 4), np.uint8), 4, crop_size=32)
  assert info.value.reason == media.BAD_CHANNELS


def test_load_frames_errors(tmp_path):
  assert _reason(lambda: media.load_frames(tmp_path / "gone.jpg", 4, crop_size=32)) == media.MISSING_FILE
  assert _reason(lambda: media.load_frames(str(tmp_path / "gone.mp4"), 4, crop_size=32)) == media.MISSING_FILE
  assert _reason(lambda: media.load_frames(b"", 4, crop_size=32)) == media.UNREADABLE_MEDIA
  jpeg = mf.image_bytes(_smooth_image(64, 64, seed=12), "jpeg")
  assert _reason(lambda: media.load_frames(jpeg[:len(jpeg) // 2], 4, crop_size=32)) == media.TRUNCATED_MEDIA
  (tmp_path / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  assert _reason(lambda: media.load_frames(tmp_path / "cut.jpg", 4, crop_size=32)) == media.TRUNCATED_MEDIA
  with pytest.raises(ValueError, match="smaller than crop_size"):
    media.load_frames(jpeg, 4, crop_size=32, short_side=16)
  with pytest.raises(TypeError):
    media.load_frames(12345, 4, crop_size=32)


# --- Clip windows -----------------------------------------------------------------------------


def _window_indices(start_s: float, end_s: float, fps: int, num_available: int, num_frames: int) -> list[int]:
  """The frames shown in [start_s, end_s) (frame i at i / fps s), cut at the end, sampled uniformly.

  The window's edges are taken as the decimals they are written as (7.2 s is frame 180 at 25 fps).
  """
  start_s, end_s = fractions.Fraction(str(start_s)), fractions.Fraction(str(end_s))
  shown = [i for i in range(num_available) if start_s <= fractions.Fraction(i, fps) < end_s] or [
      next(i for i in range(num_available) if fractions.Fraction(i, fps) >= start_s)]
  return [shown[j] for j in _expected_indices(len(shown), num_frames)]


@pytest.mark.parametrize("extension, gop", [(".mp4", 25), (".webm", None), (".mkv", 10)])
def test_a_clip_window_decodes_the_frames_shown_inside_it_by_seeking(tmp_path, extension, gop):
  """A 12 s video at 25 fps whose frames spell their index: windows give exactly the frames the
  formula in `_window_indices` picks, seeking rather than decoding everything from the start."""
  path = mf.write_video(tmp_path / f"long{extension}", mf.numbered_frames(300, 64), fps=25, gop=gop)
  reference = _sequential_decode(path)
  for window, num_frames in (((4.0, 6.0), 8), ((0.0, 0.5), 4), ((10.5, 12.0), 8), ((11.9, 30.0), 4),
                             ((3.33, 3.34), 2), ((7.0, 7.2), 8)):
    frames, info = video_lib.decode_video(path, num_frames, window=window)
    expected = _window_indices(*window, 25, 300, num_frames)
    assert mf.frame_indices_of(frames) == expected, (window, num_frames)
    np.testing.assert_array_equal(frames, reference[expected])
    shown = len([i for i in range(300) if fractions.Fraction(str(window[0])) <= fractions.Fraction(i, 25)
                 < fractions.Fraction(str(window[1]))]) or 1
    assert (info.num_available, info.short) == (shown, shown < num_frames), (window, info)
  _, info = video_lib.decode_video(path, 4, window=(8.0, 9.0))
  # Not every frame up to 9 s: MP4 declares its frame count, so seeking to the window suffices;
  # WebM and MKV store none, and the decoder also reads on to the end to count the frames.
  assert info.num_decoded < (100 if extension == ".mp4" else 225), info
  assert _reason(lambda: video_lib.decode_video(path, 4, window=(12.0, 13.0))) == media.WINDOW_PAST_END


def test_a_clip_window_through_the_manifest_pipeline_and_its_validation(tmp_path):
  """`start_s`/`end_s` in a manifest reach the decoder; a window past the end is a counted skip; a
  bad window fails when the manifest is read, naming the line."""
  import json  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mf.write_video(tmp_path / "v.mp4", mf.numbered_frames(100, 64), fps=25, gop=10)
  records = [{"media": "v.mp4", "caption": "first second", "start_s": 0, "end_s": 1.0},
             {"media": "v.mp4", "caption": "third second", "start_s": 2.0, "end_s": 3.0},
             {"media": "v.mp4", "caption": "past the end", "start_s": 5.0, "end_s": 6.0},
             {"media": "v.mp4", "caption": "whole"}]
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  config = pipeline.DataConfig.from_dict({
      "sources": [{"type": "manifest", "manifest": str(tmp_path / "m.jsonl")}], "num_frames": 4, "crop_size": 64,
      "video_dtype": "uint8", "shuffle": False, "num_epochs": 1, "error_budget": 0.5, "error_budget_min_seen": 100})
  it = pipeline.make_iterator(config, global_batch_size=4, process_index=0, process_count=1, drop_remainder=False)
  batch = next(it)
  by_record = {int(i): v for i, v, ok in zip(batch["source_index"], batch["video"], batch["valid"]) if ok}
  assert sorted(by_record) == [0, 1, 3]
  assert mf.frame_indices_of(by_record[0]) == _window_indices(0, 1, 25, 100, 4)  # 3, 9, 15, 21
  assert mf.frame_indices_of(by_record[1]) == _window_indices(2, 3, 25, 100, 4)  # 53, 59, 65, 71
  assert mf.frame_indices_of(by_record[3]) == _expected_indices(100, 4)
  assert not list(it)  # the epoch is over: every record was read
  assert it.stats()[f"skipped/{media.WINDOW_PAST_END}"] == 1
  state = it.get_state()
  assert state["skipped"][media.WINDOW_PAST_END] == 1
  # A state saved with the counts as a list (before this reason existed) still restores by position.
  it.set_state({**state, "skipped": [0, 2, 0, 0, 0, 3]})
  assert (it.stats()["skipped/unreadable_media"], it.stats()["skipped/unknown_label"],
          it.stats()[f"skipped/{media.WINDOW_PAST_END}"]) == (2, 3, 0)
  for bad, message in (({"start_s": 1.0}, r"bad.jsonl:1: a clip window needs both 'start_s' and 'end_s', got only 'start_s'"),
                       ({"start_s": 2.0, "end_s": 2.0}, r"bad.jsonl:1: clip window start_s=2.0, end_s=2.0; expected 0 <= "),
                       ({"start_s": -1, "end_s": 2}, r"expected 0 <= start_s < end_s"),
                       ({"start_s": "1", "end_s": 2}, r"key 'start_s' must be int or float, got str")):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"media": "v.mp4", **bad}) + "\n")
    with pytest.raises(manifest_lib.ManifestError, match=message):
      manifest_lib.read_manifest(tmp_path / "bad.jsonl")
  image = mf.write_image(tmp_path / "i.png", mf.numbered_frames(1, 64)[0], "png")
  with pytest.raises(media.BadSample, match="a clip window .* on an image"):
    media.load_frames(image, 4, crop_size=64, window=(0.0, 1.0))
