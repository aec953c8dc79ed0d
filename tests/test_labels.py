"""Labels of image folder trees (advshield.data.labels) and the image-tree plumbing (advshield.data.imagetree)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advshield.data.folder import ImageFolder, image_folder
from advshield.data.imagetree import check_dirs, check_image_sizes, plan_outputs, size_batches, write_batch
from advshield.data.labels import (
    RULE_INTEGER,
    RULE_PREFIX,
    RULE_SORTED,
    check_num_classes,
    class_indices,
    label_warning,
    load_class_map,
    resolve_labels,
)
from advshield.errors import AdvshieldError, DataError


def _tree(root: Path, spec: dict[str, int], size: tuple[int, int] = (4, 3)) -> Path:
    """``root/<folder>/<k>.png`` with ``spec[folder]`` images each (0 → an empty folder); pixel value = class order."""
    for j, (name, n) in enumerate(sorted(spec.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(np.full(size, 10 * j + k, np.uint8)).save(root / name / f"{k}.png")
    return root


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    return msg


def _map(tmp_path: Path, obj: object, name: str = "map.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


# -- class folders → indices --------------------------------------------------------------------------------
def test_word_folders_with_and_without_map(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"cat": 2, "dog": 1})
    plan = resolve_labels(root)
    assert plan.mode == "folder" and plan.labels == [0, 0, 1] and plan.mapping.rule == RULE_SORTED
    m = _map(tmp_path, {"dog": 5, "cat": 3, "bird": 0})
    plan = resolve_labels(root, class_map=m)
    assert plan.labels == [3, 3, 5] and plan.mapping.index == {"cat": 3, "dog": 5}
    assert plan.mapping.rule == f"class map {m}" and str(m) in plan.describe()
    assert plan.mapping.to_json() == {"rule": f"class map {m}", "class_map": str(m), "index": {"cat": 3, "dog": 5}}
    ds = image_folder(root, class_map=m)
    assert ds.labels.tolist() == [3, 3, 5] and ds.classes == ["0", "1", "2", "cat", "4", "dog"]
    assert ds.class_mapping.index == {"cat": 3, "dog": 5} and ds.subset(1).class_mapping is ds.class_mapping


def test_missing_classes_keep_true_indices_with_a_map(tmp_path: Path) -> None:
    names = [f"class{i}" for i in range(1, 10)]
    root = _tree(tmp_path / "t", {n: 1 for n in names if n not in ("class3", "class7")})
    sorted_plan = resolve_labels(root)  # torchvision's rule shifts every class after a missing one
    assert sorted_plan.labels == [0, 1, 2, 3, 4, 5, 6]
    plan = resolve_labels(root, class_map=_map(tmp_path, names))  # a list: names in index order
    assert plan.labels == [0, 1, 3, 4, 5, 7, 8]
    assert plan.mapping.index["class9"] == 8 and plan.mapping.num_classes == 9


def test_index_prefixes_on_a_partial_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"3_dress": 2, "7_sneaker": 1, "0_tshirt": 1})
    plan = resolve_labels(root)
    assert plan.mapping.rule == RULE_PREFIX and plan.labels == [0, 3, 3, 7]
    assert plan.describe() == ("labels: from class folders by index prefixes (N_name): 0_tshirt→0, 3_dress→3, "
                               "7_sneaker→7 (3 classes)")
    assert plan.mapping.names() == ["tshirt", "1", "2", "dress", "4", "5", "6", "sneaker"]
    ds = image_folder(root)
    assert ds.labels.tolist() == [0, 3, 3, 7] and ds.classes[7] == "sneaker"


def test_integer_folder_names_and_clashes() -> None:
    m = class_indices([str(i) for i in range(12)])
    assert m.rule == RULE_INTEGER and m.index["10"] == 10 and m.index["2"] == 2  # not sorted-string positions
    assert class_indices(["b", "a", "3_c"]).index == {"3_c": 0, "a": 1, "b": 2}  # mixed names: sorted rule
    with pytest.raises(DataError, match="'01_b'.*'1_a'|'1_a'.*'01_b'") as e:
        class_indices(["1_a", "01_b"])
    _one_line(e)
    assert class_indices(["a", "b"], {"a": 1, "b": 1}).index == {"a": 1, "b": 1}  # a merge the map asks for


def test_empty_class_folder_keeps_its_index(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"ant": 1, "bee": 0, "cow": 2})
    f = ImageFolder(root)
    assert f.classes == ["ant", "bee", "cow"] and f.class_counts == [1, 0, 2] and f.labels == [0, 2, 2]
    plan = resolve_labels(f)
    assert plan.labels == [0, 2, 2] and "1 empty: bee" in plan.describe()
    assert image_folder(root).labels.tolist() == [0, 2, 2]
    flat = tmp_path / "flat"
    (flat / "nothing_here").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(flat / "a.png")
    assert ImageFolder(flat).classes == [] and resolve_labels(flat).mode == "model"


def test_unreadable_class_folder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "t", {"a": 1, "b": 1, "c": 1})
    real = os.scandir
    blocked = str(root / "b")

    def scandir(path: object = ".") -> object:
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match="cannot read folder .*b: Permission denied") as e:
        ImageFolder(root)
    _one_line(e)


def test_unreadable_class_folder_chmod(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"a": 1, "b": 1})
    os.chmod(root / "b", 0)
    try:
        if os.access(root / "b", os.R_OK):
            pytest.skip("chmod 000 does not stop this user (root) from reading the folder")
        with pytest.raises(DataError, match="cannot read folder"):
            ImageFolder(root)
    finally:
        os.chmod(root / "b", 0o755)


# -- class map files ----------------------------------------------------------------------------------------
def test_class_map_forms(tmp_path: Path) -> None:
    assert load_class_map(_map(tmp_path, {"cat": 0, "dog": 7})) == {"cat": 0, "dog": 7}
    assert load_class_map(_map(tmp_path, ["cat", "dog"])) == {"cat": 0, "dog": 1}
    assert load_class_map(_map(tmp_path, {"cat": [4, "a cat"]})) == {"cat": 4}
    imagenet = {"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}
    assert load_class_map(_map(tmp_path, imagenet)) == {"n01440764": 0, "n01443537": 1}


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('"cat"', "must be a JSON object"),
    ("{}", "is empty"),
    ('{"cat": 0, "dog": -1}', 'entry "dog": -1 needs a non-negative integer'),
    ('{"cat": true}', 'entry "cat": true'),
    ('{"cat": 1.0}', 'entry "cat": 1.0'),
    ('["cat", "dog", "cat"]', "folder 'cat' is given twice"),
    ('["cat", 3]', "entry #1 3 does not name a folder"),
])
def test_class_map_errors(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "m.json"
    p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        load_class_map(p)
    assert str(p) in _one_line(e)


def test_class_map_unreadable_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read class map") as e:
        load_class_map(tmp_path)  # a directory
    _one_line(e)
    root = _tree(tmp_path / "t", {"cat": 1, "dog": 1, "emu": 0})
    with pytest.raises(DataError, match="has no entry for class folder 'emu'") as e:  # empty folders count too
        resolve_labels(root, class_map=_map(tmp_path, {"cat": 0, "dog": 1}))
    _one_line(e)


# -- modes, model size, warning -----------------------------------------------------------------------------
def test_modes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"cat": 1, "dog": 1})
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(flat / "x.png")
    assert resolve_labels(root, "auto").labels == [0, 1]
    model = resolve_labels(root, "model")
    assert model.mode == "model" and model.labels is None and model.mapping is None
    assert model.describe().startswith("labels: the model's clean predictions")
    assert resolve_labels(flat, "auto").mode == "model"
    with pytest.raises(DataError, match="--labels folder: .*has no class sub-folders") as e:
        resolve_labels(flat, "folder", mode_name="--labels")
    _one_line(e)
    with pytest.raises(AdvshieldError, match="labels must be one of"):
        resolve_labels(root, "folders")
    with pytest.raises(DataError, match="--class-map is given but labels come from the model"):
        resolve_labels(flat, class_map={"x": 0}, map_name="--class-map")
    ds = image_folder(root, labels="model")
    assert ds.labels.tolist() == [-1, -1] and ds.class_mapping is None and ds.classes == []


def test_check_num_classes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"2_a": 1, "12_b": 1, "15_c": 0})
    plan = resolve_labels(root)
    check_num_classes(plan, 13, "--model")
    with pytest.raises(DataError, match="class folder '12_b' has index 12 .* --model has only 10 classes") as e:
        check_num_classes(plan, 10, "--model")  # the empty 15_c holds no image, so 12_b is the one named
    _one_line(e)
    check_num_classes(resolve_labels(root, "model"), 2)  # model labels: nothing to check


def test_label_warning() -> None:
    w = label_warning(0.031, 10)
    assert w == ("clean accuracy 3.1 % is below 2× chance (20.0 %) for 10 classes: are the labels right? "
                 "see --class-map")
    assert label_warning(0.199, 10) is not None and label_warning(0.2, 10) is None
    assert label_warning(0.01, 1000) is None and label_warning(0.001, 1000) is not None
    assert label_warning(0.0, 2) is None  # 2× chance would be 100 %
    with pytest.raises(AdvshieldError, match="accuracy"):
        label_warning(3.1, 10)


# -- image-tree plumbing ------------------------------------------------------------------------------------
def test_resume_skips_finished_and_cleans_temp_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {"a": 2, "b": 1})
    folder = ImageFolder(root)
    out = tmp_path / "out"
    plan = plan_outputs(folder, out)
    assert plan.todo == [0, 1, 2] and plan.targets[2] == out / "b" / "0.png"
    write_batch(torch.zeros(1, 1, 4, 3), [1], plan.targets)  # a[1] finished
    (out / "b").mkdir()
    stale = [out / "a" / ".0.png.k3j2x.tmp.png", out / "b" / ".0.png.zz.tmp.png"]
    keep = [out / "a" / ".other.png.k3.tmp.png", out / "a" / ".0.png.notes"]
    for p in stale + keep:
        p.write_bytes(b"partial")
    with pytest.raises(AdvshieldError, match="1.png already exists") as e:
        plan_outputs(folder, out)
    _one_line(e)
    assert all(p.exists() for p in stale)  # nothing removed without resume
    plan = plan_outputs(folder, out, resume=True)
    assert plan.todo == [0, 2] and plan.done == 1 and sorted(plan.removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert size_batches(folder, 8, plan.todo) == [[0, 2]] and size_batches(folder, 1) == [[0], [1], [2]]
    (out / "b" / "0.png").mkdir()
    with pytest.raises(AdvshieldError, match="not a regular file"):
        plan_outputs(folder, out, resume=True)


def test_symlinked_out_dir_into_source_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {"a": 1, "b": 1})
    folder = ImageFolder(root)
    link = tmp_path / "link"
    link.symlink_to(root / "a", target_is_directory=True)
    with pytest.raises(AdvshieldError, match="--out-dir .*link is inside --source-dir .*symlink") as e:
        check_dirs(root, link)
    _one_line(e)
    out = tmp_path / "out"
    out.mkdir()
    check_dirs(root, out, folder=folder)
    (out / "b").symlink_to(root / "b", target_is_directory=True)
    with pytest.raises(AdvshieldError, match="--out-dir sub-folder .*b leads into --source-dir"):
        check_dirs(root, out, folder=folder)
    with pytest.raises(AdvshieldError, match="sub-folder .*b leads into"):
        plan_outputs(folder, out, resume=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "b").unlink()
    (out / "b").symlink_to(elsewhere, target_is_directory=True)
    assert plan_outputs(folder, out).todo == [0, 1]  # a symlink out of the source tree is fine


def test_check_image_sizes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"a": 1})
    Image.fromarray(np.zeros((9, 2), np.uint8)).save(root / "a" / "thin.png")
    folder = ImageFolder(root)
    check_image_sizes(folder, (4, 2))
    with pytest.raises(DataError, match=r"a/thin.png .* 9×2 pixels, smaller than the 3×3 minimum \(for x\)") as e:
        check_image_sizes(folder, 3, " (for x)")
    _one_line(e)
