"""Prompt-template sets for zero-shot class embeddings (kakaobrain/tcl bc2b551, datasets/templates.py).

``custom`` (9 templates) is the set behind every reported TCL number; ``simple`` is the one-template
default of the original training config.
"""

from __future__ import annotations

__all__ = ["TEMPLATES", "get_templates"]

_IMAGENET_SUBSET = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

_MASKCLIP = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "simple": ("a photo of a {}.",),
    "identity": ("{}",),
    "subset": _IMAGENET_SUBSET,
    "custom": _IMAGENET_SUBSET + ("a photo of many {}.", "a photo of {}s."),
    "maskclip": _MASKCLIP,
    "subset+maskclip": _IMAGENET_SUBSET + _MASKCLIP,
}


def get_templates(name: str) -> tuple[str, ...]:
    """Return the templates of a named set; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template set {name!r}; choose one of {sorted(TEMPLATES)}") from None
