"""The embedded Shapes dataset: every piece of ground truth checked against measured pixels.

Nothing here re-runs the generator's own logic. Objects are found by their exact colour
(`COLOR_RGB`), and motion, size, visibility, shape and spatial relations are measured from those
masks with plain NumPy, then compared with what the captions, questions and labels claim.
"""
import ast
import collections
import math
import pathlib
import pickle
import re

import numpy as np
import pytest

from vljepa_jax.data import shapes

CONFIG = shapes.ShapesConfig()  # 32x32, 8 frames
BIG = shapes.ShapesConfig(image_size=64)  # large enough for shape-from-pixels to be reliable
CANONICAL_VERB = {phrases[0]: action for action, phrases in shapes.ACTION_PHRASES.items()
                  if "{" not in phrases[0]}
RELATIONS = "above|below|to the left of|to the right of"
NOUN = r"an? (\w+) (\w+)"


# --- pixel measurements ------------------------------------------------------------------------


def color_mask(frames: np.ndarray, color: str) -> np.ndarray:
  return np.all(frames == np.asarray(shapes.COLOR_RGB[color], np.uint8), axis=-1)


def centroid(mask: np.ndarray) -> np.ndarray:
  ys, xs = np.nonzero(mask)
  return np.array([xs.mean(), ys.mean()])


def colors_in(frame: np.ndarray) -> set[str]:
  return {c for c in shapes.COLOR_RGB if color_mask(frame, c).any()}


def measured_action(frames: np.ndarray, color: str) -> str:
  """What the object of `color` does between the first and last frame, judged from pixels."""
  first, last = color_mask(frames[0], color), color_mask(frames[-1], color)
  if not first.any():
    return "appearing" if last.any() else "absent"
  if not last.any():
    for other in shapes.COLOR_RGB:  # the same pixels, now a colour absent at the start?
      if not color_mask(frames[0], other).any() and np.array_equal(
          color_mask(frames[-1], other), first):
        return "changing colour"
    return "disappearing"
  dx, dy = centroid(last) - centroid(first)
  if max(abs(dx), abs(dy)) >= 2:  # the shortest move is size / 6: 2.7 px at 16x16
    assert min(abs(dx), abs(dy)) < 1, f"{color} moved diagonally ({dx:.2f}, {dy:.2f})"
    if abs(dx) > abs(dy):
      return "moving left" if dx < 0 else "moving right"
    return "moving up" if dy < 0 else "moving down"
  # Rasterising a small rotated square changes its pixel count by up to ~1.5x; growth is 2.56x.
  area_ratio = last.sum() / first.sum()
  if area_ratio >= 1.8:
    return "growing"
  if area_ratio <= 1 / 1.8:
    return "shrinking"
  if not np.array_equal(first, last):
    assert max(abs(dx), abs(dy)) < 1, f"{color} changed shape and drifted"
    return "rotating"
  return "static"


def measured_shape(mask: np.ndarray) -> str:
  """Square, circle or triangle from how much of its enclosing circle a mask fills (>= 64 px)."""
  ys, xs = np.nonzero(mask)
  cx, cy = xs.mean(), ys.mean()
  radius = math.sqrt(((xs - cx) ** 2 + (ys - cy) ** 2).max()) + 0.5
  fill = mask.sum() / (math.pi * radius * radius)  # circle ~0.9, square ~0.64, triangle ~0.41
  return "circle" if fill > 0.8 else "square" if fill > 0.53 else "triangle"


def measured_relation(a: np.ndarray, b: np.ndarray) -> str:
  dx, dy = centroid(a) - centroid(b)
  if abs(dy) > abs(dx):
    return "above" if dy < 0 else "below"
  return "to the left of" if dx < 0 else "to the right of"


def words(text: str) -> list[str]:
  return text.split()


def mentions(text: str, phrases) -> bool:
  padded = f" {text} "
  return any(f" {p} " in padded for p in phrases)


def color_words(text: str) -> list[str]:
  return [w for w in words(text) if w in shapes.COLOR_RGB]


# --- config and source -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,field", [
    (dict(image_size=8), "image_size"),
    (dict(image_size=32.0), "image_size"),
    (dict(num_frames=0), "num_frames"),
    (dict(min_objects=0), "min_objects"),
    (dict(min_objects=3, max_objects=2), "max_objects"),
    (dict(max_objects=6), "max_objects"),
    (dict(colors=("red", "blue"), max_objects=3), "max_objects"),
    (dict(colors=("red", "magenta")), "colors"),
    (dict(colors=("red", "red")), "colors"),
    (dict(colors=()), "colors"),
    (dict(shapes=("hexagon",)), "shapes"),
    (dict(shapes=("circle", "circle")), "shapes"),
    (dict(num_paraphrases=1), "num_paraphrases"),
    (dict(num_paraphrases=9), "num_paraphrases"),
    (dict(stream_fps=0.0), "stream_fps"),
    (dict(stream_fps=float("nan")), "stream_fps"),
])
def test_config_validation_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=f"ShapesConfig.{field} "):
    shapes.ShapesConfig(**kwargs)


def test_config_accepts_lists_from_json_and_stays_hashable():
  config = shapes.ShapesConfig(colors=["red", "blue"], shapes=["circle"], max_objects=2)
  assert config.colors == ("red", "blue") and config.shapes == ("circle",)
  assert hash(config) == hash(shapes.ShapesConfig(colors=("red", "blue"), shapes=("circle",),
                                                  max_objects=2))


def test_vocabulary_constants_are_consistent():
  rgb = np.array(list(shapes.COLOR_RGB.values()) + [shapes.BACKGROUND_RGB], float)
  distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
  assert distances[~np.eye(len(rgb), dtype=bool)].min() > 60  # colours stay distinguishable
  for table in (shapes.COLOR_SYNONYMS, shapes.SHAPE_SYNONYMS):
    all_words = [w for synonyms in table.values() for w in synonyms]
    assert len(all_words) == len(set(all_words))  # one word names one thing
    assert all(synonyms[0] == key for key, synonyms in table.items())
  assert set(shapes.ACTION_PHRASES) == set(shapes.ACTIONS) == set(shapes.action_classes())
  assert shapes.object_classes(CONFIG)[:2] == ["red square", "red circle"]
  assert len(shapes.object_classes(CONFIG)) == 24


def test_shapes_package_does_not_import_jax():
  paths = sorted(pathlib.Path(shapes.__file__).parent.glob("*.py"))
  assert len(paths) > 10, paths  # the package's modules, not just its __init__
  for path in paths:
    tree = ast.parse(path.read_text(), str(path))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    tops = {name.split(".")[0] for name in imported}
    assert "jax" not in tops and "flax" not in tops, path
    # Project imports stay inside the package, so none can bring in JAX indirectly.
    outside = {n for n in imported if n.split(".")[0] == "vljepa_jax" and not n.startswith("vljepa_jax.data.shapes.")}
    assert not outside, (path, outside)


def test_source_matches_make_clip_and_is_a_grain_source():
  source = shapes.ShapesSource(CONFIG, kind="video", size=7, seed=3)
  assert len(source) == 7
  item = source[np.int64(4)]
  expected = shapes.make_clip(CONFIG, 3, 4, video=True)
  np.testing.assert_array_equal(item["frames"], expected["frames"])
  assert {k: v for k, v in item.items() if k not in ("frames", "id")} == {
      k: v for k, v in expected.items() if k != "frames"}
  assert item["id"] == "shapes-video-3-4"
  image = shapes.ShapesSource(CONFIG, kind="image", size=2, seed=3)[1]
  expected_image = shapes.make_clip(CONFIG, 3, 1, video=False)
  np.testing.assert_array_equal(image["frames"], expected_image["frames"])
  for bad in (7, -1, np.int32(100)):
    with pytest.raises(IndexError):
      source[bad]
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[2]["frames"], source[2]["frames"])
  assert clone[2]["captions"] == source[2]["captions"]
  assert "kind='video'" in repr(source) and "size=7" in repr(source) and "seed=3" in repr(source)
  with pytest.raises(ValueError, match="kind"):
    shapes.ShapesSource(CONFIG, kind="audio")
  with pytest.raises(ValueError, match="size"):
    shapes.ShapesSource(CONFIG, size=0)
  grain = pytest.importorskip("grain")
  labels = list(grain.MapDataset.source(source).map(lambda d: d["label"]))
  assert labels == [source[i]["label"] for i in range(7)]


# --- make_clip ---------------------------------------------------------------------------------


def test_determinism_by_seed_and_index():
  for video in (True, False):
    a, b = shapes.make_clip(CONFIG, 5, 9, video=video), shapes.make_clip(CONFIG, 5, 9, video=video)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    assert {k: v for k, v in a.items() if k != "frames"} == {
        k: v for k, v in b.items() if k != "frames"}
    for other in (shapes.make_clip(CONFIG, 5, 10, video=video),
                  shapes.make_clip(CONFIG, 6, 9, video=video)):
      assert not np.array_equal(a["frames"], other["frames"]) or a["captions"] != other["captions"]


def test_frames_shapes_dtypes_and_colours():
  config = shapes.ShapesConfig(image_size=40, num_frames=5)
  palette = {tuple(shapes.BACKGROUND_RGB)} | {tuple(v) for v in shapes.COLOR_RGB.values()}
  for index in range(40):
    for video in (True, False):
      item = shapes.make_clip(config, 0, index, video=video)
      frames = item["frames"]
      assert frames.dtype == np.uint8 and frames.shape == ((5 if video else 1), 40, 40, 3)
      assert {tuple(p) for p in frames.reshape(-1, 3)} <= palette  # flat colours, no blending
      assert isinstance(item["label"], int) and item["index"] == index
      seen = set().union(*(colors_in(f) for f in frames))
      listed = {o["color"] for o in item["objects"]} | {o["end_color"] for o in item["objects"]}
      assert seen == listed
      assert len({o["color"] for o in item["objects"]}) == len(item["objects"])  # distinct colours
      assert config.min_objects <= len(item["objects"]) <= config.max_objects
      for o in item["objects"]:
        for x, y in (o["start"], o["end"]):
          r = max(o["radius"], o["end_radius"])
          assert r <= x <= 39 - r and r <= y <= 39 - r  # whole shape inside the frame


def test_object_centres_match_pixels():
  for index in range(60):
    item = shapes.make_clip(CONFIG, 1, index, video=True)
    frames = item["frames"]
    for o in item["objects"]:
      for frame, centre in ((frames[0], o["start"]), (frames[-1], o["end"])):
        for color in (o["color"], o["end_color"]):
          mask = color_mask(frame, color)
          if mask.any():
            np.testing.assert_allclose(centroid(mask), centre, atol=0.6)


def test_motion_ground_truth_from_pixels():
  seen = collections.Counter()
  for index in range(200):
    item = shapes.make_clip(CONFIG, 0, index, video=True)
    frames, objects = item["frames"], item["objects"]
    primary = objects[0]
    action = measured_action(frames, primary["color"])
    assert action == primary["action"] == item["label_name"] == shapes.ACTIONS[item["label"]], index
    seen[action] += 1
    if action in shapes.DIRECTIONS:
      first, last = (color_mask(frames[k], primary["color"]) for k in (0, -1))
      assert np.abs(centroid(last) - centroid(first)).max() >= CONFIG.image_size / 6 - 0.5
    if action == "changing colour":
      assert primary["end_color"] != primary["color"]
      assert not color_mask(frames[0], primary["end_color"]).any()
      assert color_mask(frames[-1], primary["end_color"]).any()
    if action == "rotating":
      assert primary["shape"] != "circle"
    for distractor in objects[1:]:
      masks = color_mask(frames, distractor["color"])
      assert all(np.array_equal(m, masks[0]) for m in masks), "a distractor moved"
      assert masks[0].any()
  assert set(seen) == set(shapes.ACTIONS), seen


def test_single_frame_video_and_image_mode():
  config = shapes.ShapesConfig(num_frames=1)
  assert shapes.make_clip(config, 0, 0)["frames"].shape == (1, 32, 32, 3)
  for index in range(30):
    item = shapes.make_clip(CONFIG, 2, index, video=False)
    assert item["frames"].shape == (1, 32, 32, 3)
    assert all(o["action"] == "static" for o in item["objects"])
    primary = item["objects"][0]
    assert item["label_name"] == f"{primary['color']} {primary['shape']}"
    assert shapes.object_classes(CONFIG)[item["label"]] == item["label_name"]
    assert color_mask(item["frames"][0], primary["color"]).any()


def test_video_captions():
  for index in range(60):
    item = shapes.make_clip(CONFIG, 3, index, video=True)
    captions, primary = item["captions"], item["objects"][0]
    assert len(captions) == CONFIG.num_paraphrases == len(set(captions))
    assert item["caption"] == captions[0]
    canonical = words(captions[0])
    assert canonical[1:3] == [primary["color"], primary["shape"]]
    assert canonical[0] == ("an" if primary["color"][0] in "aeiou" else "a")
    for caption in captions:
      assert mentions(caption, shapes.COLOR_SYNONYMS[primary["color"]])
      assert mentions(caption, shapes.SHAPE_SYNONYMS[primary["shape"]])
      phrases = [p.split(" {")[0] for p in shapes.ACTION_PHRASES[primary["action"]]]
      assert mentions(caption, phrases)
      if primary["action"] == "changing colour":
        assert mentions(caption, shapes.COLOR_SYNONYMS[primary["end_color"]])
      assert re.fullmatch(r"[a-z ]+", caption)  # no punctuation for tokenizers to re-space


def test_image_captions_relation_from_pixels():
  relations = collections.Counter()
  for index in range(80):
    item = shapes.make_clip(CONFIG, 4, index, video=False)
    frame, objects, captions = item["frames"][0], item["objects"], item["captions"]
    assert len(set(captions)) == CONFIG.num_paraphrases
    for caption in captions:
      for o in objects:
        assert mentions(caption, shapes.COLOR_SYNONYMS[o["color"]])
        assert mentions(caption, shapes.SHAPE_SYNONYMS[o["shape"]])
    if len(objects) == 1:
      assert captions[0] == f"{'an' if objects[0]['color'][0] in 'aeiou' else 'a'} " \
                            f"{objects[0]['color']} {objects[0]['shape']}"
      continue
    match = re.match(rf"{NOUN} ({RELATIONS}) {NOUN}", captions[0])
    assert match, captions[0]
    first, relation, second = match.group(1), match.group(3), match.group(4)
    assert first == objects[0]["color"] and match.group(2) == objects[0]["shape"]
    assert measured_relation(color_mask(frame, first), color_mask(frame, second)) == relation
    relations[relation] += 1
  assert len(relations) == 4


def test_questions_are_answered_by_the_pixels():
  types = collections.Counter()
  for index in range(150):
    for video in (True, False):
      item = shapes.make_clip(BIG, 5, index, video=video)
      frames, query, answer = item["frames"], item["query"], item["answer"]
      candidates = item["answer_candidates"]
      assert answer in candidates and len(candidates) == len(set(candidates))
      present = colors_in(frames[0])
      if m := re.fullmatch(r"what colour is the shape that (.+)\?", query):
        action = CANONICAL_VERB[m[1]]
        actors = [c for c in shapes.COLOR_RGB if measured_action(frames, c) == action]
        assert actors == [answer], (query, actors)
        assert candidates == list(BIG.colors)
      elif m := re.fullmatch(r"which direction does the (\w+) (\w+) move\?", query):
        assert measured_action(frames, m[1]) == f"moving {answer}"
        assert measured_shape(color_mask(frames[0], m[1])) == m[2]
      elif m := re.fullmatch(r"what does the (\w+) (\w+) do\?", query):
        assert measured_action(frames, m[1]) == answer
        assert candidates == list(shapes.ACTIONS)
      elif m := re.fullmatch(r"how many (\w+) are there\?", query):
        shape = {v: k for k, v in shapes.SHAPE_PLURALS.items()}[m[1]]
        count = sum(measured_shape(color_mask(frames[0], c)) == shape for c in present)
        assert answer == shapes.NUMBER_WORDS[count], (query, answer, count)
        # nothing appears or vanishes in a counted clip, so any frame gives the same count
        assert all(len(colors_in(f)) == len(present) for f in frames)
      elif m := re.fullmatch(r"what colour is the (\w+)\?", query):
        matching = [c for c in present if measured_shape(color_mask(frames[0], c)) == m[1]]
        assert matching == [answer]
        assert all(color_mask(f, answer).any() for f in frames)
      elif m := re.fullmatch(r"what shape is the (\w+) object\?", query):
        assert all(color_mask(f, m[1]).any() for f in frames)
        assert measured_shape(color_mask(frames[0], m[1])) == answer
        assert candidates == list(BIG.shapes)
      else:
        raise AssertionError(f"unexpected question {query!r}")
      types[(video, query.split()[1])] += 1
  # every question form occurs, temporal ones on videos only
  assert {q for v, q in types if not v} == {"many", "colour", "shape"}
  assert {q for v, q in types if v} == {"many", "colour", "shape", "direction", "does"}


def test_object_shapes_match_pixels():
  for index in range(60):
    item = shapes.make_clip(BIG, 6, index, video=False)
    for o in item["objects"]:
      assert measured_shape(color_mask(item["frames"][0], o["color"])) == o["shape"]


def test_five_objects_fit_in_the_smallest_frame():
  config = shapes.ShapesConfig(image_size=16, min_objects=5, max_objects=5, num_frames=4)
  for index in range(20):
    item = shapes.make_clip(config, 0, index, video=True)
    assert len(item["objects"]) == 5
    visible = set().union(*(colors_in(f) for f in item["frames"]))
    assert visible >= {o["color"] for o in item["objects"][1:]}
    assert measured_action(item["frames"], item["objects"][0]["color"]) == item["label_name"]


# --- hard negatives ----------------------------------------------------------------------------


def parse_canonical(text: str):
  match = re.fullmatch(rf"{NOUN} ({RELATIONS}) {NOUN}", text)
  assert match, text
  return match.groups()  # colour_a, shape_a, relation, colour_b, shape_b


def test_hard_negatives():
  kinds = collections.Counter()
  for index in range(100):
    item = shapes.make_hard_negative(CONFIG, 7, index)
    assert set(item) == {"positive_1", "positive_2", "negative", "kind"}
    p1, p2, negative, kind = item["positive_1"], item["positive_2"], item["negative"], item["kind"]
    assert p1 != p2 and negative not in (p1, p2)
    kinds[kind] += 1
    color_a, shape_a, relation, color_b, shape_b = parse_canonical(p1)
    assert color_a != color_b
    for color, shape in ((color_a, shape_a), (color_b, shape_b)):  # same scene in other words
      assert mentions(p2, shapes.COLOR_SYNONYMS[color])
      assert mentions(p2, shapes.SHAPE_SYNONYMS[shape])
    n_color_a, n_shape_a, n_relation, n_color_b, n_shape_b = parse_canonical(negative)
    if kind == "attribute":
      assert color_words(negative) == color_words(p1)[::-1]
      assert (n_shape_a, n_relation, n_shape_b) == (shape_a, relation, shape_b)
    elif kind == "relation":
      assert shapes.INVERSE_RELATION[relation] == n_relation
      assert (n_color_a, n_shape_a, n_color_b, n_shape_b) == (color_a, shape_a, color_b, shape_b)
    else:
      assert kind == "object"
      assert (n_color_a, n_relation, n_color_b) == (color_a, relation, color_b)
      assert (n_shape_a != shape_a) + (n_shape_b != shape_b) == 1
  assert set(kinds) == set(shapes.HARD_NEGATIVE_KINDS), kinds
  a, b = shapes.make_hard_negative(CONFIG, 7, 3), shapes.make_hard_negative(CONFIG, 7, 3)
  assert a == b


def test_hard_negatives_without_a_second_shape():
  config = shapes.ShapesConfig(shapes=("circle",))
  kinds = {shapes.make_hard_negative(config, 0, i)["kind"] for i in range(40)}
  assert kinds == {"attribute", "relation"}


# --- state-action (inverse dynamics) -----------------------------------------------------------


def test_state_action_items():
  answers = collections.Counter()
  for index in range(40):
    item = shapes.make_state_action_item(CONFIG, 8, index)
    initial, final, candidates, answer = (item["initial"], item["final"], item["candidates"],
                                          item["answer"])
    assert initial.shape == final.shape == (32, 32, 3) and initial.dtype == np.uint8
    assert candidates.shape == (4, 8, 32, 32, 3) and candidates.dtype == np.uint8
    assert isinstance(answer, int) and 0 <= answer < 4
    answers[answer] += 1
    np.testing.assert_array_equal(candidates[answer, -1], final)
    for k in range(4):
      np.testing.assert_array_equal(candidates[k, 0], initial)  # every candidate starts there
      if k != answer:
        assert not np.array_equal(candidates[k, -1], final)
    captions = item["candidate_captions"]
    assert len(captions) == 4 == len(set(captions))
    for clip, caption in zip(candidates, captions):
      if m := re.fullmatch(r"an? (\w+) (\w+) changes colour to (\w+)", caption):
        assert measured_action(clip, m[1]) == "changing colour"
        assert color_mask(clip[-1], m[3]).any() and not color_mask(clip[0], m[3]).any()
      else:
        m = re.fullmatch(r"an? (\w+) (\w+) (.+)", caption)
        assert measured_action(clip, m[1]) == CANONICAL_VERB[m[3]], caption
      assert color_mask(clip[0], m[1]).any()
      others = colors_in(initial) - {m[1]}
      for color in others:  # only the named object acts
        assert measured_action(clip, color) == "static"
  assert len(answers) == 4
  again = shapes.make_state_action_item(CONFIG, 8, 3)
  np.testing.assert_array_equal(again["candidates"], shapes.make_state_action_item(
      CONFIG, 8, 3)["candidates"])
  with pytest.raises(ValueError, match="num_frames"):
    shapes.make_state_action_item(shapes.ShapesConfig(num_frames=1), 0, 0)


# --- long streams ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream():
  return shapes.LongStream(CONFIG, 9, 0, duration_s=180.0)


def segment_frames(stream, segment) -> range:
  first = math.ceil(segment.start_s * stream.fps)
  last = min(math.ceil(segment.end_s * stream.fps) - 1, stream.num_frames - 1)
  return range(first, last + 1)


def test_stream_segments_cover_the_duration(stream):
  segments = stream.segments
  assert stream.fps == CONFIG.stream_fps and stream.num_frames == 360
  assert segments[0].start_s == 0.0 and segments[-1].end_s == 180.0
  assert all(a.end_s == b.start_s for a, b in zip(segments, segments[1:]))
  assert all(4.0 <= s.end_s - s.start_s <= 30.0 for s in segments)
  assert len(segments) >= 6 and len({s.action for s in segments}) >= 4
  for k, segment in enumerate(segments):
    middle = (segment.start_s + segment.end_s) / 2
    assert stream.caption_at(middle) == segment.caption
    assert stream.segment_index_at(segment.start_s) == k
    assert segment.action in shapes.ACTIONS
  assert stream.segment_index_at(180.0) == len(segments) - 1
  with pytest.raises(ValueError):
    stream.caption_at(181.0)


def test_stream_frames_and_clips_agree(stream):
  for i in (0, 17, 200, 359):
    np.testing.assert_array_equal(stream.frame(i), stream.clip(i, 1)[0])
  strided = stream.clip(10, 5, stride=3)
  assert strided.shape == (5, 32, 32, 3) and strided.dtype == np.uint8
  for k in range(5):
    np.testing.assert_array_equal(strided[k], stream.frame(10 + 3 * k))
  tail = stream.clip(358, 4)
  np.testing.assert_array_equal(tail[2], tail[3])
  np.testing.assert_array_equal(tail[3], stream.frame(359))
  with pytest.raises(IndexError):
    stream.frame(360)


def test_stream_events_match_pixels(stream):
  frames = stream.clip(0, stream.num_frames)
  translations = 0
  for segment in stream.segments:
    indices = segment_frames(stream, segment)
    clip = frames[indices.start:indices.stop]
    color = color_words(segment.caption)[0]
    if segment.action in shapes.DIRECTIONS:
      translations += 1
      assert measured_action(clip, color) == segment.action, segment
    for other in colors_in(clip[0]) - {color}:  # one event at a time, the rest hold still
      assert measured_action(clip, other) == "static", (segment, other)
  assert translations >= 1
  # The scene persists across segments: no object jumps between consecutive frames (the fastest
  # move is size / 3 over 4 s at 2 fps, 1.3 px per frame).
  for a, b in zip(frames, frames[1:]):
    for color in colors_in(a) & colors_in(b):
      jump = np.abs(centroid(color_mask(b, color)) - centroid(color_mask(a, color))).max()
      assert jump <= 2.0


def test_stream_is_deterministic_and_lazy():
  a = shapes.LongStream(CONFIG, 1, 2, duration_s=60.0)
  b = shapes.LongStream(CONFIG, 1, 2, duration_s=60.0)
  assert a.segments == b.segments
  np.testing.assert_array_equal(a.clip(0, 120, stride=1), b.clip(0, 120, stride=1))
  assert shapes.LongStream(CONFIG, 1, 3, duration_s=60.0).segments != a.segments
  big = shapes.LongStream(shapes.ShapesConfig(image_size=256), 0, 0, duration_s=600.0)
  assert big.num_frames == 1200
  assert len(pickle.dumps(big)) < 200_000  # 1200 frames at 256^2 would be ~236 MB
  assert big.clip(500, 3).shape == (3, 256, 256, 3)
  with pytest.raises(ValueError, match="duration_s"):
    shapes.LongStream(CONFIG, 0, 0, duration_s=1.0)


def test_source_label_names_name_each_items_label():
  for kind in ("video", "image"):
    source = shapes.ShapesSource(CONFIG, kind=kind, size=12, seed=4)
    names = source.label_names
    assert len(set(names)) == len(names)
    for i in range(len(source)):
      item = source[i]
      assert names[item["label"]] == item["label_name"], (kind, i)
