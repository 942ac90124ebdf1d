"""Label sets shared by every corpus of a task, synthetic or converted.

Keyword spotting follows Speech Commands v2 (12 classes): the ten command words, every other
word folded into `_unknown_`, and background-noise clips as `_silence_`. The SynthDASB
builder and the Speech Commands adapter both write these labels, so a model trained on one
is scored on the other with the same answer set.
"""

from __future__ import annotations

KS_COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KS_UNKNOWN = "_unknown_"
KS_SILENCE = "_silence_"
KS_LABELS = KS_COMMANDS + (KS_UNKNOWN, KS_SILENCE)
