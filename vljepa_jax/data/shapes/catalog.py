"""What Shapes scenes are made of, and the words for it: colours, shapes, actions, relations.

Every colour has an exact RGB value (masks are `frames == COLOR_RGB[colour]`), and every colour,
shape, action and relation has a canonical word or phrase first, then synonyms for paraphrases.
"""
from __future__ import annotations

# Well separated in RGB (the closest pair, yellow/orange, is 86 apart; the background is at least
# 170 from every colour), so they stay distinguishable after resizing or colour jitter.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (40, 190, 40),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (30, 215, 220),
}
BACKGROUND_RGB: tuple[int, int, int] = (20, 20, 20)

# Canonical word first. Synonyms are unique across colours so a word names one colour only.
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "plum"),
    "orange": ("orange", "amber", "tangerine"),
    "white": ("white", "ivory", "snowy"),
    "cyan": ("cyan", "aqua", "turquoise"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "block", "tile"),
    "circle": ("circle", "disc", "ball", "dot"),
    "triangle": ("triangle", "wedge", "arrowhead", "trigon"),
}
SHAPE_PLURALS: dict[str, str] = {"square": "squares", "circle": "circles", "triangle": "triangles"}

ACTIONS: tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down", "rotating",
                            "growing", "shrinking", "appearing", "disappearing", "changing colour")
# Verb phrases per action, canonical first. Captions avoid punctuation on purpose: WordPiece
# decoders re-space hyphens and commas, which would break exact caption round trips downstream.
ACTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving left": ("moves left", "slides to the left", "travels leftward", "heads left"),
    "moving right": ("moves right", "slides to the right", "travels rightward", "heads right"),
    "moving up": ("moves up", "rises", "travels upward", "climbs"),
    "moving down": ("moves down", "sinks", "travels downward", "descends"),
    "rotating": ("rotates", "spins", "turns in place", "twirls"),
    "growing": ("grows", "gets bigger", "expands", "swells"),
    "shrinking": ("shrinks", "gets smaller", "contracts", "dwindles"),
    "appearing": ("appears", "shows up", "pops into view", "comes into view"),
    "disappearing": ("disappears", "vanishes", "blinks out", "goes out of view"),
    "changing colour": ("changes colour to {color}", "turns {color}", "becomes {color}",
                        "switches to {color}"),
}
DIRECTIONS: dict[str, str] = {"moving left": "left", "moving right": "right", "moving up": "up",
                              "moving down": "down"}
# Spatial relation of a first object to a second one, canonical phrase first.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
    "to the left of": ("to the left of", "left of", "on the left of"),
    "to the right of": ("to the right of", "right of", "on the right of"),
}
INVERSE_RELATION: dict[str, str] = {"above": "below", "below": "above",
                                    "to the left of": "to the right of",
                                    "to the right of": "to the left of"}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
