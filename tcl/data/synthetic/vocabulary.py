"""The vocabulary of the synthetic world: eight object ("thing") kinds and six background ("stuff") kinds.

Each kind carries the benchmark class names it stands for (resolved by name in mmseg, see
:mod:`.benchmarks`), the nouns and adjectives a caption may use, and the look (colour, texture,
silhouette) that makes it learnable densely by a tiny CLIP; the private lookups and horizon rules
(which stuff may sit above which) are shared by rendering and captioning.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ObjectKind", "StuffKind", "OBJECT_KINDS", "STUFF_KINDS", "KIND_NAMES", "STUFF_NAMES"]


@dataclass(frozen=True)
class ObjectKind:
    """An object ("thing") kind: the benchmark names and the look that makes it learnable."""

    name: str
    voc_name: str  # as in mmseg's PascalVOCDataset.METAINFO['classes']
    coco_name: str  # as in mmseg's COCOStuffDataset.METAINFO['classes']
    nouns: tuple[tuple[str, str], ...]  # (singular, plural); the first is the class name, used most often
    adjectives: tuple[str, ...]  # only words that are true of the drawing
    colour: tuple[int, int, int]  # main body colour (RGB)
    texture: str
    shape: str
    aspect: float  # bounding-box width / height


@dataclass(frozen=True)
class StuffKind:
    """A background ("stuff") kind with its COCO-Stuff class and caption phrases."""

    name: str
    coco_stuff_name: str
    where: tuple[str, ...]  # prepositional phrases: "on the grass"
    scene: tuple[str, ...]  # noun phrases for "<scene> with <objects>"
    look: str


OBJECT_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind("car", "car", "car", (("car", "cars"), ("automobile", "automobiles")), ("red",),
               (205, 30, 30), "solid with vertical shading", "side view: body, cabin, blue windows, black wheels", 2.0),
    ObjectKind("bus", "bus", "bus", (("bus", "buses"),), ("yellow",),
               (245, 195, 20), "a row of dark windows and a dark band", "long rounded box on two wheels", 2.4),
    ObjectKind("boat", "boat", "boat", (("boat", "boats"), ("sailboat", "sailboats")), ("striped", "white"),
               (25, 45, 120), "navy and white horizontal stripes", "trapezoid hull, mast and two white sails", 1.45),
    ObjectKind("bottle", "bottle", "bottle", (("bottle", "bottles"),), ("glass", "teal"),
               (20, 160, 160), "cylinder shading with a bright highlight, cream label",
               "tall body, shoulder, neck, red cap", 0.42),
    ObjectKind("cat", "cat", "cat", (("cat", "cats"), ("kitten", "kittens")), ("ginger", "orange", "tabby"),
               (235, 125, 25), "dark diagonal tabby stripes", "round face, two pointed ears, green eyes", 1.0),
    ObjectKind("dog", "dog", "dog", (("dog", "dogs"), ("puppy", "puppies")), ("brown", "spotted"),
               (170, 110, 55), "black spots", "four-legged body, head, floppy dark ear, tail", 1.5),
    ObjectKind("bird", "bird", "bird", (("bird", "birds"),), ("purple",),
               (125, 45, 175), "light zigzag bands", "oval body, round head, tail, orange beak and legs", 1.3),
    ObjectKind("sheep", "sheep", "sheep", (("sheep", "sheep"), ("lamb", "lambs")), ("white", "woolly"),
               (236, 232, 220), "grey wool curls", "cloud of wool, black head and legs", 1.4),
)

STUFF_KINDS: tuple[StuffKind, ...] = (
    StuffKind("grass", "grass", ("on the grass", "on a lawn", "in a green field"), ("a grassy field", "a green lawn"),
              "green, noisy with vertical blade streaks"),
    StuffKind("sky", "sky-other", ("against the sky", "under a blue sky"), ("a blue sky", "a clear sky"),
              "blue vertical gradient, darker at the top"),
    StuffKind("sand", "sand", ("on the sand", "on a sandy beach"), ("a sandy beach", "the sand"),
              "beige with fine speckle and diagonal ripples"),
    StuffKind("sea", "sea", ("on the sea", "by the sea", "on the water"), ("the open sea", "calm water"),
              "dark blue with light wavy horizontal crests"),
    StuffKind("wall", "wall-brick", ("in front of a brick wall", "by a brick wall"), ("a brick wall",),
              "red-brown bricks in staggered rows with light mortar"),
    StuffKind("road", "road", ("on the road", "on the street"), ("an asphalt road", "the street"),
              "dark grey asphalt speckle"),
)

KIND_NAMES = tuple(kind.name for kind in OBJECT_KINDS)
STUFF_NAMES = tuple(stuff.name for stuff in STUFF_KINDS)
_KIND = {kind.name: kind for kind in OBJECT_KINDS}
_STUFF = {stuff.name: stuff for stuff in STUFF_KINDS}
_TOP_STUFF = ("sky", "wall")  # may sit above a horizon ...
_BOTTOM_STUFF = ("grass", "sand", "sea", "road")  # ... over one of these
_TWO_STUFF_P = 0.4
