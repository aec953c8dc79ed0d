"""The command line: help on every command, exit code 2 and one line for user mistakes, outputs."""
import json
import subprocess
import sys

import pytest

from advshield.cli.main import build_parser, main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "advshield.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        out.append([name])
        for a in p._actions:
            if getattr(a, "choices", None) and a.dest.endswith("_command"):
                out += [[name, s] for s in a.choices]
    return out


@pytest.mark.parametrize("cmd", subcommands(), ids=lambda c: " ".join(c))
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage: advshield" in capsys.readouterr().out


def one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advshield: error:") and "\n" not in err and "Traceback" not in err
    assert needle in err
    return err


def test_unknown_zoo_model(capsys, tiny_zoo, tmp_path):
    one_line_error(capsys, ["eval", "--models", "zoo:nope", "--out", str(tmp_path / "o")], "unknown zoo model 'nope'")


def test_unknown_attack_and_defense(capsys, tiny_zoo, tmp_path):
    one_line_error(capsys, ["eval", "--models", "zoo:tiny-vgg", "--attacks", "fgsm,nope", "--out", str(tmp_path)],
                   "unknown attack 'nope'")
    one_line_error(capsys, ["demo", "--defenses", "jpegx", "--out", str(tmp_path)], "unknown defense 'jpegx'")


def test_missing_data_dir(capsys, tiny_zoo, tmp_path):
    one_line_error(capsys, ["eval", "--models", "zoo:tiny-vgg", "--data", "fashion-mnist", "--data-root",
                            str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "does not exist")
    one_line_error(capsys, ["eval", "--models", "zoo:tiny-vgg", "--data", str(tmp_path / "nodir"),
                            "--out", str(tmp_path / "o")], "unknown dataset")
    assert not (tmp_path / "o").exists()


def test_corrupt_image_in_folder(capsys, tiny_zoo, tmp_path):
    (tmp_path / "imgs" / "cls").mkdir(parents=True)
    (tmp_path / "imgs" / "cls" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    one_line_error(capsys, ["eval", "--models", "zoo:tiny-vgg", "--data", str(tmp_path / "imgs"),
                            "--out", str(tmp_path / "o")], "a.png")


def test_checkpoint_not_matching_card(capsys, tiny_zoo, tmp_path):
    card = json.loads((tiny_zoo / "tiny-vgg.json").read_text())
    card["arch_args"]["widths"] = [4, 9]
    card["sha256"] = card["sha256"]
    (tiny_zoo / "tiny-vgg.json").write_text(json.dumps(card))
    one_line_error(capsys, ["eval", "--models", "zoo:tiny-vgg", "--out", str(tmp_path / "o")], "does not match")
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"junk")
    one_line_error(capsys, ["eval", "--models", str(bad), "--out", str(tmp_path / "o")], "card")


def test_bad_numbers_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--eps", "abc"])
    assert e.value.code == 2 and "is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--n", "0"])
    assert e.value.code == 2


def test_zoo_list_json(capsys, tiny_zoo):
    assert main(["zoo", "list", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in cards}
    assert {"tiny-lenet", "tiny-vgg", "tiny-resnet"} <= names
    assert all({"name", "kind", "dataset", "metrics"} <= set(c) for c in cards)
    assert main(["zoo", "list"]) == 0
    assert "zoo:tiny-vgg" in capsys.readouterr().out


def test_demo_writes_report(tiny_zoo, tmp_path, fake_fmnist, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "8", "--models", "tiny-lenet,tiny-vgg,tiny-resnet",
                 "--batch-size", "8", "--attacks", "fgsm,pgd", "--data-root", str(fake_fmnist)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # the terminal gets a short summary (one small table) and where the report is, not every table
    assert "## Robust accuracy" not in printed and "report.html" in printed and "clean → worst case" in printed
    assert len(printed.splitlines()) < 40
    report = json.loads((out / "report.json").read_text())
    from advshield.cli.eval import default_defenses

    defenses = default_defenses()  # the slow ones (diffpure) only run when named
    assert "diffpure" not in defenses and "defense diffpure left out: slow" in captured.err
    rows = report["rows"]
    transfer = [r for r in rows if not r["source"].startswith("adaptive-")]
    adaptive = [r for r in rows if r["source"].startswith("adaptive-")]
    assert report["meta"]["n"] == 8 and len(transfer) == 2 * 3 * len(defenses) * 3
    skipped = report["meta"]["non_differentiable_defenses"]  # full-gradient cells skipped for them, with a note
    assert {"jpeg", "bit-depth"} <= set(skipped)
    assert {r["attack"] for r in adaptive} == {"pgd"}  # the demo's default --adaptive-attacks
    assert len(adaptive) == 3 * ((len(defenses) - 1) * 2 - len(skipped))
    worst = {(w["defense"], w["target"]): w for w in report["worst_case"]}
    jpeg = worst[("jpeg", "tiny-vgg")]
    assert jpeg["threat_model"] == "adaptive (bpda)" and jpeg["worst_case_accuracy"] == jpeg[
        "adaptive_worst_case_accuracy"] <= jpeg["transfer_worst_case_accuracy"]
    assert (out / "report.md").read_text().startswith("# advshield demo")
    assert sorted(p.name for p in out.iterdir()) == ["examples.safetensors", "flags.safetensors", "report.html",
                                                     "report.json", "report.md"]
    html = (out / "report.html").read_text()
    assert '<section id="examples">' in html and html.count("<img ") >= 4 * 2 * 3  # samples × attacks × columns


def test_eval_on_image_folder_and_outputs(tiny_zoo, tmp_path, fake_fmnist, capsys):
    assert main(["data", "export", "--dataset", "fashion-mnist", "--data-root", str(fake_fmnist), "--n", "12",
                 "--out", str(tmp_path / "pngs")]) == 0
    before = sorted(p.read_bytes() for p in (tmp_path / "pngs").rglob("*.png"))
    # exporting again must not overwrite what is there
    assert main(["data", "export", "--dataset", "fashion-mnist", "--data-root", str(fake_fmnist), "--n", "12",
                 "--out", str(tmp_path / "pngs")]) == 2
    assert main(["eval", "--models", "zoo:tiny-vgg,zoo:tiny-lenet", "--sources", "zoo:tiny-resnet", "--data",
                 str(tmp_path / "pngs"), "--attacks", "fgsm", "--eot", "2", "--draws", "2", "--out",
                 str(tmp_path / "ev")]) == 0
    rows = json.loads((tmp_path / "ev" / "report.json").read_text())["rows"]
    assert {(r["source"], r["target"], r["setting"]) for r in rows if r["setting"] == "transfer"} == {
        ("tiny-resnet", "tiny-vgg", "transfer"), ("tiny-resnet", "tiny-lenet", "transfer")}
    assert {r["setting"] for r in rows} <= {"transfer", "adaptive-full", "adaptive-bpda"}
    assert sorted(p.read_bytes() for p in (tmp_path / "pngs").rglob("*.png")) == before


def test_console_entry_point_runs_as_module():
    r = run_cli("zoo", "nope")
    assert r.returncode == 2
    r = run_cli("eval", "--models", "zoo:definitely-missing", "--out", "/tmp/advshield-never")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_list_enumerates_every_registry(capsys):
    from advshield.registry import ATTACKS, DEFENSES, MODELS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for reg in (ATTACKS, DEFENSES, MODELS):
        assert all(f"  {n} " in out for n in reg.names())


def test_components_doc_is_in_sync(capsys):
    from pathlib import Path

    from advshield.cli.listing import REGISTRIES, render

    doc = Path(__file__).resolve().parent.parent / "docs" / "COMPONENTS.md"
    assert doc.read_text() == render(list(REGISTRIES), markdown=True), \
        "regenerate with: advshield list --markdown > docs/COMPONENTS.md"
