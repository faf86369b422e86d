"""Samples the input pipeline skips: `BadSample` and the reasons it counts them under.

Datasets contain broken files, and one of them must not stop a training run: every failure that is
the sample's fault raises `BadSample` with one of `SKIP_REASONS`, which the pipeline counts and
skips. Programming errors (a bad argument) still raise `ValueError` / `TypeError`, so they are not
silently counted as bad data. Its own module so that `media` and `video` both raise it without
importing each other.
"""
from __future__ import annotations

# Reasons a sample is skipped; the pipeline counts per reason.
MISSING_FILE = "missing_file"
UNREADABLE_MEDIA = "unreadable_media"
TRUNCATED_MEDIA = "truncated_media"
EMPTY_TEXT = "empty_text"
BAD_CHANNELS = "bad_channels"
WINDOW_PAST_END = "window_past_end"  # a clip window (start_s, end_s) that starts after the video ends
SKIP_REASONS = (MISSING_FILE, UNREADABLE_MEDIA, TRUNCATED_MEDIA, EMPTY_TEXT, BAD_CHANNELS, WINDOW_PAST_END)


class BadSample(Exception):
  """A sample the pipeline skips; `reason` is one of `SKIP_REASONS`, `detail` says what was wrong."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail

  def __reduce__(self):
    # Worker processes pickle exceptions back to the parent; the default would call
    # `BadSample(message)` with one argument.
    return (BadSample, (self.reason, self.detail))
