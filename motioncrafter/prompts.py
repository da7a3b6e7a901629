"""Appearance prior enhancement: swap the subject and scene of a clip's prompt.

"a man is serving a pizza"  ->  "a bear is serving a pizza in a forest"

The frozen base supervises the tuned model on such prompts (see `losses`), so
the motion adapter keeps the base's appearance for other subjects and scenes.

Where the manifest does not name the subject phrase, a heuristic finds it:
the prompt's opening noun phrase, i.e. its words up to the first verb-like
word (a known verb, or a word ending in -s / -ing / -ed after the first noun).
The scene is the trailing prepositional phrase ("on a black background",
"in a forest") whose words include a scene noun from the configuration.
"""

from __future__ import annotations

import random
import re

from motioncrafter.config import EnhanceConfig

_VERBS = {"is", "are", "was", "were", "moves", "move", "bounces", "grows", "runs", "walks", "jumps", "flies", "dances"}
_PREPOSITIONS = {"on", "in", "at", "under", "over", "near", "inside", "beside", "through", "across"}


def _words(prompt: str) -> list[str]:
    return re.findall(r"[\w'-]+", prompt)


def find_subject(prompt: str) -> str:
    """The opening noun phrase of `prompt` ("a red circle" in "a red circle moves ...")."""
    words = _words(prompt)
    for i, word in enumerate(words):
        w = word.lower()
        if i >= 2 or (i == 1 and words[0].lower() not in ("a", "an", "the")):
            if w in _VERBS or w.endswith(("ing", "ed")) or (w.endswith("s") and not w.endswith("ss")):
                return " ".join(words[:i])
    return " ".join(words[:2])


def find_scene(prompt: str, scene_words: list[str]) -> str | None:
    """The trailing prepositional phrase naming a place, or None."""
    words = _words(prompt)
    nouns = {w.lower() for w in scene_words}
    for i in range(len(words) - 1, 0, -1):
        if words[i].lower() in _PREPOSITIONS:
            if any(w.lower() in nouns for w in words[i + 1 :]):
                return " ".join(words[i:])
            return None  # the last phrase is not a place: the prompt has no scene
    return None


def enhance(prompt: str, rng: random.Random, cfg: EnhanceConfig, subject: str | None = None) -> str:
    """`prompt` with its subject swapped (and, with probability, its scene) from the vocabularies."""
    subject = subject or find_subject(prompt)
    if subject.lower() not in prompt.lower():
        raise ValueError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    start = prompt.lower().index(subject.lower())
    choices = [s for s in cfg.subjects if s.lower() != subject.lower()]
    new = prompt[:start] + rng.choice(choices) + prompt[start + len(subject) :] if choices else prompt
    if cfg.scenes and rng.random() < cfg.swap_scene_prob:
        scene = find_scene(new, cfg.scene_words)
        options = [s for s in cfg.scenes if not scene or s.lower() != scene.lower()]
        if options:
            body = new[: new.lower().rindex(scene.lower())].rstrip() if scene else new.rstrip(" .")
            new = f"{body} {rng.choice(options)}"
    return new
