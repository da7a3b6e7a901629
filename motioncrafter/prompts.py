"""Appearance prior enhancement: swap the subject and scene of a clip's prompt.

"a man is serving a pizza"  ->  "a bear is serving a pizza in a forest"

The frozen base supervises the tuned model on such prompts (see `losses`), so
the motion adapter keeps the base's appearance for other subjects and scenes.

Where the manifest does not name the subject phrase, a heuristic finds it: the
prompt's opening noun phrase, i.e. its words up to the first verb-like word (a
known verb, a word ending in -ing / -ed, or one ending in -s after the first
noun: "two kids" is a plural after a number, "a dog runs" a verb), and never past
punctuation ("A man (in a red coat) walks" -> "A man"). The scene is the trailing
prepositional phrase ("on a black background", "in a forest") whose words
include a scene noun from the configuration. Both are cut from the prompt as
written, so markup and odd spacing survive the swap.

Enhancement never fails: when the subject cannot be placed (a manifest subject
that is not in the prompt, a prompt without words), the new subject is put in
front instead: "a bear, <prompt>".

Vocabularies: `EnhanceConfig` lists everyday subjects and scenes by default; a
base folder may carry its own in `enhance.json` (the shipped MovingShapes base
does), used when the configuration leaves the lists empty (see `vocabulary_for`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

from motioncrafter.config import EnhanceConfig

VOCABULARY_FILE = "enhance.json"  # {"subjects": [...], "scenes": [...]} in a base's folder
_VERBS = {"is", "are", "was", "were", "moves", "move", "bounces", "grows", "runs", "run", "walks", "walk", "jumps",
          "jump", "flies", "fly", "dances", "dance", "plays", "play", "rides", "ride", "swims", "swim", "sits", "sit",
          "stands", "stand", "eats", "eat", "falls", "fall", "turns", "turn", "spins", "spin", "rolls", "roll"}
_DETERMINERS = {"a", "an", "the", "two", "three", "four", "five", "six", "some", "many", "several", "few", "this",
                "that", "these", "those", "my", "his", "her", "their", "our", "its", "one"}
_PREPOSITIONS = {"on", "in", "at", "under", "over", "near", "inside", "beside", "through", "across"}
_WORD = re.compile(r"[\w'-]+")
_MARKUP = re.compile(r"<[^<>]*>|&\w+;")  # HTML-like tags and entities are not words


def _spans(text: str) -> list[re.Match]:
    """Words of `text`, at their positions in it (markup blanked out, so it is skipped)."""
    return list(_WORD.finditer(_MARKUP.sub(lambda m: " " * len(m.group()), text)))


def _verb_like(words: list[str], i: int) -> bool:
    w, prev = words[i].lower(), words[i - 1].lower()
    if w in _VERBS or w.endswith(("ing", "ed")):
        return True
    plural_after_determiner = prev in _DETERMINERS or prev.isdigit()
    return w.endswith("s") and not w.endswith("ss") and not plural_after_determiner


def find_subject(prompt: str) -> str:
    """The opening noun phrase of `prompt` as written ("a red circle" in "a red circle moves ..."), or ""."""
    spans = _spans(prompt)
    if not spans:
        return ""
    words = [m.group() for m in spans]
    end = len(spans)  # no verb: the whole prompt ("a cat")
    for i in range(1, len(spans)):
        punctuated = _MARKUP.sub("", prompt[spans[i - 1].end() : spans[i].start()]).strip()
        after_article = i == 1 and words[0].lower() in ("a", "an", "the")  # "a dancing bear"
        if punctuated or words[i].lower() in _PREPOSITIONS or (not after_article and _verb_like(words, i)):
            end = i
            break
    return prompt[spans[0].start() : spans[end - 1].end()]


def find_scene(prompt: str, scene_words: list[str]) -> str | None:
    """The trailing prepositional phrase naming a place, as written in the prompt, or None."""
    spans = _spans(prompt)
    nouns = {w.lower() for w in scene_words}
    for i in range(len(spans) - 1, 0, -1):
        if spans[i].group().lower() in _PREPOSITIONS:
            if any(m.group().lower() in nouns for m in spans[i + 1 :]):
                return prompt[spans[i].start() : spans[-1].end()]
            return None  # the last phrase is not a place: the prompt has no scene
    return None


def vocabulary_for(cfg: EnhanceConfig, base_vocabulary: dict | None) -> EnhanceConfig:
    """`cfg` with empty subject / scene lists filled from the base's own vocabulary, else the
    everyday defaults (`config.GENERAL_SUBJECTS`, `config.GENERAL_SCENES`)."""
    from motioncrafter.config import GENERAL_SCENES, GENERAL_SUBJECTS

    own = base_vocabulary or {}
    return dataclasses.replace(
        cfg,
        subjects=list(cfg.subjects or own.get("subjects") or GENERAL_SUBJECTS),
        scenes=list(cfg.scenes or own.get("scenes") or GENERAL_SCENES),
    )


def read_vocabulary(folder: str | Path) -> dict | None:
    """A base folder's `enhance.json`, checked; None when it has none."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    for key in ("subjects", "scenes"):
        if not (isinstance(data.get(key), list) and all(isinstance(w, str) and w.strip() for w in data[key])):
            raise ValueError(f"{path}: {key!r} must be a list of non-empty strings")
    return {"subjects": data["subjects"], "scenes": data["scenes"]}


def enhance(prompt: str, rng: random.Random, cfg: EnhanceConfig, subject: str | None = None) -> str:
    """`prompt` with its subject swapped (and, with probability, its scene) from the vocabularies."""
    cfg = vocabulary_for(cfg, None) if not (cfg.subjects and cfg.scenes) else cfg
    subject = (subject or find_subject(prompt)).strip()
    start = prompt.lower().find(subject.lower()) if subject else -1
    choices = [s for s in cfg.subjects if s.lower() != subject.lower()]
    new_subject = rng.choice(choices)
    if start < 0:  # cannot be placed: the documented fallback
        head, rest = f"{new_subject}, ", prompt.strip()
    else:
        head, rest = prompt[:start] + new_subject, prompt[start + len(subject) :]
    if cfg.scenes and rng.random() < cfg.swap_scene_prob:
        scene = find_scene(rest, cfg.scene_words)  # after the subject: "a knight in armour" is no scene
        options = [s for s in cfg.scenes if not scene or s.lower() != scene.lower()]
        if options:
            body = (head + rest[: rest.lower().rindex(scene.lower())]).rstrip() if scene else (head + rest).rstrip(" .")
            return f"{body} {rng.choice(options)}"
    return head + rest
