"""Every bad input of benchmarks/bad_inputs.py's CASES is refused: exit code 2, one line ``advshield: error: ...``
on stderr, no file written, no input changed. Plus the pieces it relies on: the one-line parser, the argument
types, umask modes and strict JSON of the atomic writers."""
from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bad_inputs  # noqa: E402

from advshield.cli import common  # noqa: E402
from advshield.cli.main import build_parser, main, one_line  # noqa: E402
from advshield.utils import atomic_path, current_umask, to_json_text, write_json, write_text  # noqa: E402


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=lambda c: c.id)
def test_bad_input_is_refused(case, tmp_path):
    res = bad_inputs.run_case(case, tmp_path / "case")
    assert res.outcome == "refused", f"{res.outcome}: {res.detail} | rc={res.rc} | stderr={res.stderr!r}"


def test_case_ids_are_unique_and_none_is_pending():
    ids = [c.id for c in bad_inputs.CASES + bad_inputs.PENDING_CASES]
    assert len(ids) == len(set(ids))
    assert not bad_inputs.PENDING_CASES  # every case the table lists is checked by this test


def test_classify_tells_outcomes_apart(tmp_path):
    ok = bad_inputs.classify(2, "advshield: error: --eps: bad\n", [], [], None)
    assert ok == ("refused", "")
    assert bad_inputs.classify(0, "", ["out/a.png"], [], None)[0] == "accepted"
    assert bad_inputs.classify(None, "", [], [], "ValueError: x")[0] == "traceback"
    assert bad_inputs.classify(2, "advshield: error: x\n", ["out/a.png"], [], None)[0] == "other"
    assert bad_inputs.classify(2, "advshield: error: x\n", [], ["tree/0_c0/0.png"], None)[0] == "other"
    assert bad_inputs.classify(2, "usage: x\nadvshield: error: x\n", [], [], None)[0] == "other"
    assert bad_inputs.classify(2, "advshield: error: \x1b[31mx\x1b[0m\n", [], [], None)[0] == "other"


def test_runner_sees_written_files_and_changed_inputs(tmp_path):
    def writes(p):
        (p["out"]).mkdir()
        (p["out"] / "x.txt").write_text("x")
        next(p["tree"].rglob("*.png")).write_bytes(b"overwritten")

    res = bad_inputs.run_case(bad_inputs.Case("w", "writes", api=writes, setup=("tree",)), tmp_path / "c")
    assert res.outcome == "accepted" and "out/x.txt" in res.created and len(res.changed) == 1


def test_runner_reports_a_traceback(tmp_path):
    def boom(p):
        raise RuntimeError("boom")

    res = bad_inputs.run_case(bad_inputs.Case("b", "boom", api=boom), tmp_path / "c")
    assert res.outcome == "traceback" and "boom" in res.detail


def test_setups_make_the_images_they_promise(tmp_path):
    from PIL import Image

    paths = bad_inputs.build(bad_inputs.Case("s", "s", setup=("tree", "tiny", "odd", "link")), tmp_path / "r")
    sizes = {p.relative_to(tmp_path / "r").as_posix(): Image.open(p).size
             for p in (tmp_path / "r").rglob("*.png") if "link" not in p.parts}
    assert sizes["tiny/1_c1/0.png"] == (1, 1) and sizes["odd/1_c1/0.png"] == (40, 33)
    assert sizes["tree/0_c0/0.png"] == (28, 28) and Path(paths["link"]).resolve() == Path(paths["tree"]).resolve()


# -- the parser ---------------------------------------------------------------------------------------------
def test_parser_error_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["attack", "--attack", "pgd", "--source-dir", "a", "--out-dir", "b", "--eps", "nan"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "usage" not in err
    assert err.startswith("advshield: error: --eps: ") and "nan" in err and "advshield attack --help" in err


def test_every_subparser_uses_the_one_line_parser():
    seen = []

    def walk(p):
        seen.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    walk(sp)

    walk(build_parser())
    assert len(seen) > 10 and all(type(p).__name__ == "Parser" for p in seen)


def test_help_is_unchanged(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bypass", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: advshield bypass") and "--noise-eps" in out


def test_one_line_strips_ansi_and_newlines():
    assert one_line("\x1b[1;31mbad\x1b[0m value\nsecond\r\n line\x07") == "bad value second line"


def test_run_time_errors_are_one_line_without_ansi(capsys, monkeypatch):
    from advshield.cli import listing
    from advshield.errors import AdvshieldError

    def fail(args):
        raise AdvshieldError("\x1b[31mred\x1b[0m\nand more")

    monkeypatch.setattr(listing, "run", fail, raising=False)
    parser = build_parser()
    monkeypatch.setattr("advshield.cli.main.build_parser", lambda: parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["list"].set_defaults(run=fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "advshield: error: red and more\n"


# -- argument types -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn, good, bad", [
    (common.budget_pixels, {"16": 16 / 255, "255": 1.0, "0.5": 0.5 / 255}, ["nan", "inf", "-inf", "0", "-3", "255.5",
                                                                           "1e400", "x", ""]),
    (common.step_pixels, {"2": 2 / 255}, ["nan", "0", "-1", "256"]),
    (common.min_budget_pixels, {"0": 0.0, "5": 5 / 255}, ["nan", "-1", "300"]),
    (common.norm_budget_pixels, {"382.5": 1.5}, ["nan", "inf", "0", "-1"]),
    (common.unit_float, {"0": 0.0, "1": 1.0, "0.05": 0.05}, ["nan", "-0.1", "1.5", "2"]),
    (common.finite_float, {"-2": -2.0, "0": 0.0}, ["nan", "inf", "-inf"]),
    (common.positive_float, {"1e-3": 1e-3}, ["0", "-1", "nan", "inf"]),
    (common.non_negative_float, {"0": 0.0}, ["-1", "nan"]),
    (common.positive_int, {"1": 1, "7": 7}, ["0", "-3", "2.5", "nan"]),
    (common.batch_int, {"64": 64}, ["0", str(common.MAX_BATCH + 1)]),
    (common.size_int, {"28": 28}, ["0", "100000"]),
    (common.seed_int, {"0": 0, str(2**32 - 1): 2**32 - 1}, ["-1", str(2**32), "nan"]),
    (common.worker_count, {"0": 0, "4": 4}, ["-1", "100000"]),
    (common.csv_list, {"a,b": ["a", "b"], " a , ,b ": ["a", "b"]}, [",", " , ", ""]),
    (common.plain_name, {"fmnist-vgg": "fmnist-vgg", "a.b_c": "a.b_c"},
     ["../x", "a/b", "a\\b", "", ".hidden", "..", "a..b", "x" * 201, "a\x00b", " a"]),
    (common.device_name, {"auto": "auto", "cpu": "cpu"}, ["nope", "cuda:99", "tpu"]),
])
def test_argument_types(fn, good, bad):
    for text, want in good.items():
        got = fn(text)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as e:
            fn(text)
        assert "\n" not in str(e.value)


def test_pixels_default_helper_still_takes_l2_budgets():
    assert common.pixels("382.5") == pytest.approx(1.5)
    with pytest.raises(argparse.ArgumentTypeError):
        common.pixels("nan")


# -- atomic writes: umask modes and strict JSON --------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_umask_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"a": 1})
        with atomic_path(tmp_path / "c.bin") as tmp:
            tmp.unlink()  # a writer that replaces the temporary file
            tmp.write_bytes(b"c")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json", "c.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.bin"]


def test_png_and_safetensors_writers_get_the_umask_mode(tmp_path):
    import torch

    from advshield.data.folder import save_png
    from advshield.models import LeNet, save_checkpoint

    old = os.umask(0o022)
    try:
        save_png(torch.zeros(1, 4, 4), tmp_path / "a.png")
        save_checkpoint(LeNet(channels=[2, 2], hidden=[4, 4]), tmp_path / "m.safetensors",
                        {"name": "m", "kind": "classifier", "dataset": "fashion-mnist", "architecture": "lenet",
                         "arch_args": {"channels": [2, 2], "hidden": [4, 4]}, "metrics": {}})
    finally:
        os.umask(old)
    for name in ("a.png", "m.safetensors", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_json_is_strict(tmp_path):
    import numpy as np

    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5, (2, float("nan"))], "c": {"d": np.float32(np.nan)},
           "e": np.float64(0.25), "f": np.int64(3), "g": None, "h": "NaN"}
    text = to_json_text(obj)
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5, [2, None]], "c": {"d": None}, "e": 0.25,
                                "f": 3, "g": None, "h": "NaN"}
    write_json(tmp_path / "r.json", obj)
    json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))


def test_grid_report_json_is_strict(tmp_path):
    from advshield.eval.results import save_results

    class Res:
        examples: dict = {}

        def to_json(self):
            return {"rows": [{"accuracy": float("nan")}]}

        def flags(self):
            return {}

    paths = save_results(Res(), tmp_path / "o")
    assert json.loads(paths["json"].read_text()) == {"rows": [{"accuracy": None}]}
