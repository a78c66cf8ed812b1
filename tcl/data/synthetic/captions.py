"""Captions of the synthetic world: varied, natural sentences naming every object kind present and no other.

A caption names each kind with its count (synonyms and true adjectives now and then, in any order),
optionally places the scene on its background ("on the grass", "a brick wall with ..."), and varies
its template, capitalisation and full stop. Every choice is drawn from the scene's generator after
the drawing, so captions are as deterministic as the images. :func:`named_kinds` reads a caption
back into the kinds it names (what the disjoint caption control of ``train.shuffle_captions``
compares); the other helpers are private to the package.
"""

from __future__ import annotations

import re

import numpy as np

from .vocabulary import _KIND, _STUFF, _TOP_STUFF, OBJECT_KINDS, STUFF_KINDS

__all__ = ["named_kinds"]


_NUMBERS = {2: "two", 3: "three"}
_TEMPLATES = ("{objs}{where}", "a photo of {objs}{where}", "a picture of {objs}{where}", "an image of {objs}{where}",
              "there {be} {objs}{where}", "a drawing of {objs}{where}", "{objs}{where} in the picture")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng: np.random.Generator, kind: str, count: int) -> str:
    info = _KIND[kind]
    nouns = info.nouns[0] if len(info.nouns) == 1 or rng.random() < 0.8 else info.nouns[1 + int(rng.integers(
        len(info.nouns) - 1))]
    words = [nouns[0] if count == 1 else nouns[1]]
    if rng.random() < 0.35:
        words.insert(0, info.adjectives[int(rng.integers(len(info.adjectives)))])
    head = _article(words[0]) if count == 1 else _NUMBERS[count]
    return " ".join([head, *words])


def _join(phrases: list[str], rng: np.random.Generator, allow_with: bool) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if allow_with and len(phrases) == 2 and rng.random() < 0.25:
        return f"{phrases[0]} with {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _caption(rng: np.random.Generator, objects: tuple[str, ...], stuffs: tuple[str, ...]) -> str:
    """A varied, natural caption naming every object kind present (with its count) and no other."""
    counts: dict[str, int] = {}
    for kind in objects:
        counts[kind] = counts.get(kind, 0) + 1
    order = list(counts)
    order = [order[i] for i in rng.permutation(len(order))]  # objects are named in any order
    phrases = [_noun_phrase(rng, kind, counts[kind]) for kind in order]
    mention = rng.random()
    objs = _join(phrases, rng, allow_with=mention >= 0.2)
    where = ""
    if mention < 0.2:  # "<scene> with <objects>"
        stuff = _STUFF[stuffs[int(rng.integers(len(stuffs)))]]
        text = f"{stuff.scene[int(rng.integers(len(stuff.scene)))]} with {objs}"
    else:
        if mention < 0.6:
            picked = [s for s in STUFF_KINDS if s.name in stuffs]
            if len(picked) == 2 and rng.random() < 0.5:
                picked = [picked[1], picked[0]] if picked[0].name in _TOP_STUFF else picked
                where = " " + " ".join(s.where[int(rng.integers(len(s.where)))] for s in picked)
            else:
                stuff = picked[int(rng.integers(len(picked)))]
                where = " " + stuff.where[int(rng.integers(len(stuff.where)))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        be = "is" if counts[order[0]] == 1 else "are"
        text = template.format(objs=objs, where=where, be=be)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.4:
        text += "."
    return text


# Every noun a caption may use for a kind, and the words of the background phrases that identify a
# stuff kind ("a grassy field", "on a sandy beach"); adjectives are left out: "white" is both a boat
# and a sheep.
_STUFF_WORDS = {"grass": ("grass", "grassy", "lawn", "field"), "sky": ("sky",), "sand": ("sand", "sandy", "beach"),
                "sea": ("sea", "water"), "wall": ("wall", "brick"), "road": ("road", "street", "asphalt")}
_WORD_KIND = {word: kind.name for kind in OBJECT_KINDS for pair in kind.nouns for word in pair}
_WORD_KIND.update({word: name for name, words in _STUFF_WORDS.items() for word in words})
assert set(_STUFF_WORDS) == set(_STUFF), "every stuff kind needs its caption words"


def named_kinds(caption: str) -> frozenset[str]:
    """The object and stuff kinds a caption names (``"Two cats on a lawn."`` → ``{"cat", "grass"}``).

    Exact for the captions of :func:`_caption`; on other text it finds the same nouns wherever they
    occur as words.
    """
    return frozenset(_WORD_KIND[w] for w in re.findall(r"[a-z]+", caption.lower()) if w in _WORD_KIND)
