"""Labels of an image folder tree, from one place: which class index each class folder stands for, and whether a
command's true labels come from the folders or from the model's clean predictions.

Class index of a class folder (:func:`class_indices`), first rule that applies:

1. a class map (:func:`load_class_map`): the folder's entry in the map (every class folder must have one);
2. every folder named ``<N>_<name>`` (what ``advshield data export`` writes): ``N``;
3. every folder name an integer (``0`` … ``9`` for MNIST-style trees): ``int(name)``;
4. otherwise the position of the folder among all class folders sorted by name, empty ones included
   (torchvision's ImageFolder rule).

Rules 1-3 keep the true index when some classes are missing from the tree; rule 4 cannot, which is why a clean
accuracy near chance (:func:`label_warning`) points the user to a class map.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import check_number
from ..errors import AdvshieldError, DataError

if TYPE_CHECKING:
    from .folder import ImageFolder

INDEX_PREFIX = re.compile(r"^(\d+)_")
_INTEGER = re.compile(r"^\d+$")
MODES = ("auto", "folder", "model")

RULE_MAP = "class map"
RULE_PREFIX = "index prefixes (N_name)"
RULE_INTEGER = "integer folder names"
RULE_SORTED = "sorted folder names (torchvision ImageFolder rule)"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- class maps -----------------------------------------------------------------------------------------------
def _index(value: Any) -> int | None:
    """``value`` as a class index (a non-negative JSON integer, not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def parse_class_map(obj: Any, where: str = "class map") -> dict[str, int]:
    """A decoded class map → ``{folder name: class index}``. Accepted forms:

    - ``{"cat": 3, "dog": 5}``: folder name → non-negative integer;
    - ``["cat", "dog"]``: folder names in index order (``cat`` → 0, ``dog`` → 1);
    - ``{"cat": [3, "a cat"], ...}``: folder name → ``[index, description]``;
    - ``{"0": ["n01440764", "tench"], ...}``: ImageNet's ``imagenet_class_index.json`` (index → [folder, name]).

    Two folders may share an index (deliberately merged classes); a folder named twice is an error. Raises a
    one-line DataError naming ``where`` and the first bad entry."""
    out: dict[str, int] = {}

    def put(name: Any, index: int | None, entry: str) -> None:
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: entry {entry} does not name a folder (need a non-empty string)")
        if index is None:
            raise DataError(f"{where}: entry {entry} needs a non-negative integer class index")
        if name in out:
            raise DataError(f"{where}: folder {name!r} is given twice (entry {entry})")
        out[name] = index

    if isinstance(obj, list):
        for k, name in enumerate(obj):
            put(name, k, f"#{k} {json.dumps(name)[:60]}")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            entry = f"{json.dumps(key)[:60]}: {json.dumps(value)[:60]}"
            if isinstance(value, list) and len(value) == 2:
                if _index(value[0]) is not None and isinstance(value[1], str):  # folder: [index, description]
                    put(key, value[0], entry)
                    continue
                if _INTEGER.match(key) and all(isinstance(v, str) for v in value):  # ImageNet: index: [folder, name]
                    put(value[0], int(key), entry)
                    continue
            put(key, _index(value), entry)
    else:
        raise DataError(f"{where} must be a JSON object (folder → class index) or a list of folder names, "
                        f"not a JSON {type(obj).__name__}")
    if not out:
        raise DataError(f"{where} is empty")
    return out


def load_class_map(path: str | os.PathLike) -> dict[str, int]:
    """Read a class map JSON file (forms: :func:`parse_class_map`) → ``{folder name: class index}``.

    Unreadable or invalid files are a one-line DataError naming the file (and the first bad entry)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class map {path}: {_one_line(e)}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"class map {path} is not valid JSON: {_one_line(e)}") from None
    return parse_class_map(obj, f"class map {path}")


# -- folder → index -------------------------------------------------------------------------------------------
@dataclass
class ClassMapping:
    """Class folder name → class index, and the rule that gave it (see the module docstring)."""

    index: dict[str, int]
    rule: str
    source: str | None = None  # the class map file, when there is one

    @property
    def num_classes(self) -> int:
        """Classes the indices span: the largest index + 1."""
        return max(self.index.values(), default=-1) + 1

    def names(self) -> list[str]:
        """One name per class index ``0 … num_classes-1``: the folder of that index (``N_`` prefix stripped under
        the prefix rule; the first folder in sorted order when several share it), ``str(i)`` for a gap."""
        out = [str(i) for i in range(self.num_classes)]
        for name in sorted(self.index, reverse=True):
            m = INDEX_PREFIX.match(name) if self.rule == RULE_PREFIX else None
            out[self.index[name]] = name[m.end():] if m else name
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the mapping (for reports)."""
        return {"rule": self.rule, "class_map": self.source, "index": dict(self.index)}


def _unique(index: dict[str, int], rule: str) -> dict[str, int]:
    seen: dict[int, str] = {}
    for name, k in index.items():
        if k in seen:
            raise DataError(f"class folders {seen[k]!r} and {name!r} both get index {k} by {rule}; rename one or "
                            "give a class map")
        seen[k] = name
    return index


def class_indices(classes: list[str], class_map: Mapping[str, int] | str | os.PathLike | None = None,
                  source: str | None = None) -> ClassMapping:
    """Class index of every class folder name in ``classes`` (rules: module docstring).

    ``class_map`` is a ``{folder: index}`` dict or a class map file; every class folder must be in it (a one-line
    DataError names the first missing one); folders in the map but absent from the tree are fine, and two folders
    mapped to one index are allowed (a merge the map asks for). Without a map, two folders that the prefix or
    integer rule sends to one index are an error. ``source`` names a dict's origin in messages and in ``rule``."""
    classes = sorted(classes)
    if class_map is not None:
        if isinstance(class_map, (str, os.PathLike)):
            source = str(class_map)
            class_map = load_class_map(class_map)
        where = f"class map {source}" if source else "class map"
        missing = next((c for c in classes if c not in class_map), None)
        if missing is not None:
            raise DataError(f"{where} has no entry for class folder {missing!r} ({len(class_map)} entries)")
        for c in classes:
            if _index(class_map[c]) is None:
                raise DataError(f"{where}: class folder {c!r} maps to {class_map[c]!r}, not a non-negative integer")
        return ClassMapping({c: int(class_map[c]) for c in classes}, where, source)
    if classes and all(INDEX_PREFIX.match(c) for c in classes):
        return ClassMapping(_unique({c: int(INDEX_PREFIX.match(c).group(1)) for c in classes}, RULE_PREFIX),
                            RULE_PREFIX)
    if classes and all(_INTEGER.match(c) for c in classes):
        return ClassMapping(_unique({c: int(c) for c in classes}, RULE_INTEGER), RULE_INTEGER)
    return ClassMapping({c: k for k, c in enumerate(classes)}, RULE_SORTED)


# -- per-image labels -----------------------------------------------------------------------------------------
@dataclass
class LabelPlan:
    """Where a command's true labels come from.

    ``mode`` is "folder" (``labels[i]`` = class index of image ``i``'s class folder, via ``mapping``) or "model"
    (``labels`` and ``mapping`` are None: the model's clean predictions stand in). ``counts`` is images per class
    folder; ``root`` the tree; ``why`` says why model mode was chosen."""

    mode: str
    labels: list[int] | None
    mapping: ClassMapping | None
    root: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    why: str = ""

    def describe(self) -> str:
        """One line for commands to print once, e.g. ``labels: from class folders by index prefixes (N_name):
        0_tshirt→0, 3_dress→3, ... (2 classes)``."""
        if self.mapping is None:
            return f"labels: the model's clean predictions ({self.why or 'no class folders'})"
        items = sorted(self.mapping.index.items(), key=lambda kv: (kv[1], kv[0]))
        shown = ", ".join(f"{name}→{k}" for name, k in items[:3]) + (", ..." if len(items) > 3 else "")
        empty = [name for name, n in sorted(self.counts.items()) if n == 0]
        note = f", {len(empty)} empty: {', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}" if empty else ""
        return f"labels: from class folders by {self.mapping.rule}: {shown} ({len(items)} classes{note})"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (mode, rule, folder → index) for reports."""
        return {"mode": self.mode, **(self.mapping.to_json() if self.mapping else {"why": self.why})}


def resolve_labels(folder: ImageFolder | str | os.PathLike, mode: str = "auto",
                   class_map: Mapping[str, int] | str | os.PathLike | None = None, *,
                   mode_name: str = "labels", map_name: str = "class_map") -> LabelPlan:
    """The :class:`LabelPlan` of an :class:`~advshield.data.folder.ImageFolder` (or a tree path).

    ``mode``: "folder" (class sub-folders required), "model" (the model's clean predictions), "auto" (folder when
    the tree has class sub-folders, else model). ``class_map`` (dict or file) applies to folder labels; giving one
    when the labels come from the model is an error rather than silently ignored. ``mode_name`` / ``map_name`` are
    the argument names used in messages (a CLI passes ``--labels`` / ``--class-map``)."""
    if mode not in MODES:
        raise AdvshieldError(f"{mode_name} must be one of {', '.join(MODES)}, not {mode!r}")
    if isinstance(folder, (str, os.PathLike)):
        from .folder import ImageFolder

        folder = ImageFolder(folder)
    root = str(folder.root)
    if mode == "folder" and not folder.classes:
        raise DataError(f"{mode_name} folder: {root} has no class sub-folders holding images (use {mode_name} model "
                        "to take the model's predictions as labels)")
    if mode == "model" or not folder.classes:
        if class_map is not None:
            why = f"{mode_name} model" if mode == "model" else f"{root} has no class sub-folders"
            raise DataError(f"{map_name} is given but labels come from the model ({why}); drop {map_name}")
        why = f"{mode_name} model" if mode == "model" else f"{root} has no class sub-folders"
        return LabelPlan("model", None, None, root, why=why)
    mapping = class_indices(list(folder.classes), class_map)
    index = [mapping.index[c] for c in folder.classes]
    labels = [index[k] for k in folder.labels]
    counts = dict(zip(folder.classes, getattr(folder, "class_counts", None) or []))
    return LabelPlan("folder", labels, mapping, root, counts)


def check_num_classes(plan: LabelPlan, num_classes: int, where: str = "the model") -> None:
    """Refuse a plan whose labels do not fit a ``num_classes``-way model: a one-line DataError naming the first
    class folder (holding images) whose index is ``>= num_classes``. ``where`` names the model (e.g. ``--model``)."""
    if plan.mapping is None or plan.labels is None:
        return
    used = set(plan.labels)
    bad = sorted((k, name) for name, k in plan.mapping.index.items() if k >= num_classes and k in used
                 and plan.counts.get(name, 1) > 0)
    if bad:
        k, name = bad[0]
        raise DataError(f"class folder {name!r} has index {k} (by {plan.mapping.rule}), but {where} has only "
                        f"{num_classes} classes (0-{num_classes - 1}); fix the folder names or give a class map")


def label_warning(accuracy: float, num_classes: int) -> str | None:
    """The one-line warning for a clean accuracy (fraction in [0,1]) below twice chance (``2/num_classes``), which
    usually means the folder labels do not match the model's classes; None otherwise. With 2 classes or fewer twice
    chance is 100 %, so there is no warning."""
    acc = check_number(accuracy, "accuracy", low=0.0, high=1.0)
    n = int(check_number(num_classes, "num_classes", low=1, integer=True))
    floor = 2.0 / n
    if n <= 2 or acc >= floor:
        return None
    return (f"clean accuracy {acc * 100:.1f} % is below 2× chance ({floor * 100:.1f} %) for {n} classes: "
            "are the labels right? see --class-map")
