"""Vocabularies: ordered class lists with thing/stuff flags and prompt synonyms."""
from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import VocabularyError  # noqa: F401  (re-exported)

VOCAB_DIR = Path(__file__).parent / "vocabularies"  # the benchmark vocabularies shipped with the package


@dataclass(frozen=True)
class ClassInfo:
    """One class: ``id`` as the dataset spells it on disk, ``name``, thing flag, prompt synonyms."""

    id: int
    name: str
    isthing: bool
    synonyms: tuple[str, ...]
    color: tuple[int, int, int] = (128, 128, 128)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered class list; the position of a class is its contiguous label (0..K-1)."""

    name: str
    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise VocabularyError(f"vocabulary {self.name!r} is empty: give at least one class")
        seen: dict[str, int] = {}
        for i, c in enumerate(self.classes):
            key = c.name.strip().lower()
            if not key:
                raise VocabularyError(f"vocabulary {self.name!r}: class #{i} has an empty name")
            if key in seen:
                raise VocabularyError(
                    f"vocabulary {self.name!r}: duplicate class name {c.name!r} at positions {seen[key]} and {i}; "
                    "class names must be unique (merge them or rename one)")
            seen[key] = i
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise VocabularyError(f"vocabulary {self.name!r}: duplicate class ids")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def thing_mask(self) -> list[bool]:
        return [c.isthing for c in self.classes]

    def id_to_label(self) -> dict[int, int]:
        """Dataset category id -> contiguous label."""
        return {c.id: i for i, c in enumerate(self.classes)}


def vocabulary_from_records(name: str, records: list[dict]) -> Vocabulary:
    """Build from the json records of ``pipeline/data/vocabularies/*.json`` (name, id, isthing, synonyms, color)."""
    if not isinstance(records, list):
        raise VocabularyError(f"vocabulary {name!r}: expected a JSON list of class records like "
                              f"{{\"id\": 0, \"name\": \"wall\"}}, got a {type(records).__name__}")
    classes = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "name" not in r:
            raise VocabularyError(f"vocabulary {name!r}: record #{i} is not a class record with a 'name' (like "
                                  f"{{\"id\": 0, \"name\": \"wall\"}}), got {r!r:.60}")
        # semantic-only lists (ADE-847) carry the label-map value as trainId; the others use id
        cid = r["trainId"] if "trainId" in r and "isthing" not in r else r.get("id", i)
        synonyms = tuple(r.get("synonyms") or [r["name"]])
        color = tuple(r.get("color") or ((37 * i) % 256, (91 * i) % 256, (173 * i) % 256))
        classes.append(ClassInfo(int(cid), str(r["name"]), bool(r.get("isthing", 0)), synonyms, color))
    return Vocabulary(name, tuple(classes))


def vocabulary_from_names(names: list[str], name: str = "custom") -> Vocabulary:
    """A vocabulary from free text names (``fovseg predict --classes``); all treated as things. Category ids
    start at 1 as in COCO panoptic (0 is unlabeled there), each class with its own colour."""
    cleaned = [n.strip() for n in names if n.strip()]
    return Vocabulary(name, tuple(ClassInfo(i + 1, n, True, (n,), distinct_colour(i)) for i, n in enumerate(cleaned)))


def distinct_colour(i: int) -> tuple[int, int, int]:
    """The ``i``-th of a sequence of well-separated colours (golden-ratio hue steps, two brightness levels)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 if i % 2 == 0 else 0.7)
    return int(255 * r), int(255 * g), int(255 * b)


def load_packaged_vocabulary(file_stem: str) -> Vocabulary:
    """One of the benchmark vocabularies shipped in ``pipeline/data/vocabularies``."""
    path = VOCAB_DIR / f"{file_stem}.json"
    if not path.is_file():
        raise VocabularyError(f"no packaged vocabulary {file_stem!r} (looked for {path})")
    return vocabulary_from_records(file_stem, json.loads(path.read_text()))


def packaged_vocabularies() -> list[str]:
    """Names of the vocabularies shipped in ``pipeline/data/vocabularies/``."""
    return sorted(p.name[:-5] for p in VOCAB_DIR.iterdir() if p.name.endswith(".json"))


def vocabulary_names() -> list[str]:
    """The vocabularies ``--vocab`` knows by name: the packaged ones and the toy world's."""
    from pipeline.data.toy import TOY_VOCABULARIES

    return [*packaged_vocabularies(), *TOY_VOCABULARIES]


def load_vocabulary(spec: str) -> Vocabulary:
    """A packaged or toy vocabulary by name, or a vocabulary JSON file by path (``fovseg predict/attention/evaluate
    --vocab``); anything else is an error listing the names."""
    from pipeline.data.toy import TOY_VOCABULARIES, toy_vocabulary

    if spec in TOY_VOCABULARIES:
        return toy_vocabulary(spec)
    if spec in packaged_vocabularies():
        return load_packaged_vocabulary(spec)
    if spec.endswith(".json") or Path(spec).is_file():
        return load_vocabulary_file(spec)
    raise VocabularyError(f"--vocab {spec}: no such vocabulary or file; valid names: {', '.join(vocabulary_names())}"
                          ", or give a vocabulary JSON file (a list of {\"id\", \"name\", \"isthing\"} records)")


def load_vocabulary_file(path: str | Path) -> Vocabulary:
    """A vocabulary from a JSON file in the packaged format (a list of {id, name, isthing, ...} records)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VocabularyError(f"cannot read vocabulary {path}: {exc}; give a packaged vocabulary name or a JSON "
                              "list of class records") from None
    return vocabulary_from_records(path.stem, records)
