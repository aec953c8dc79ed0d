"""The "bad inputs" table (issue 14): command lines and API calls a user gets wrong, and what advshield does.

Every case runs in a fresh temporary directory (its own cwd, small PNG trees written with Pillow), through the
in-process ``advshield.cli.main.main(argv)`` with stdout/stderr captured. Outcomes:

- ``refused``: exit code 2, exactly one stderr line starting ``advshield: error:`` (no ANSI codes), no file created
  and no file under the case's directory changed (hashed before and after) — the only good outcome;
- ``traceback``: an exception escaped (or the run crashed / ran out of its memory or time limit);
- ``accepted``: exit code 0, i.e. a silent wrong result for an input that should have been refused;
- ``other``: anything else (exit code 2 but files written or inputs changed, several lines, ...).

:data:`CASES` must all be ``refused`` (``tests/test_bad_inputs.py``). :data:`PENDING_CASES` are problems owned
by other parts of the code; this script runs and reports them too, the test does not yet.

Run: .venv/bin/python benchmarks/bad_inputs.py  (writes the `bad-inputs` section of docs/RESULTS.md; each case
runs in a forked child with a memory and a time limit)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ANSI_ESC = "\x1b"


@dataclass(frozen=True)
class Case:
    """One bad input. ``argv``: the command line with ``{placeholders}`` for the setup's paths (see
    :data:`SETUPS`; ``{out}`` and ``{root}`` always exist), or ``api``: a callable taking the path dict.
    ``setup``: names in :data:`SETUPS` to build first. ``owner``: who fixes it (pending cases)."""

    id: str
    tries: str
    argv: tuple[str, ...] = ()
    api: Callable[[dict[str, Path]], Any] | None = None
    setup: tuple[str, ...] = ()
    owner: str = ""


@dataclass
class Result:
    id: str
    outcome: str  # refused | traceback | accepted | other
    rc: int | None
    stderr: str
    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    detail: str = ""


# -- setups -------------------------------------------------------------------------------------------------
def _png(path: Path, h: int, w: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)


def _tree(root: Path, name: str, sizes: list[tuple[int, int]]) -> Path:
    """``root/name/<i>_c<i>/<k>.png``: one class folder per entry of ``sizes``, two gray images each."""
    base = root / name
    for i, (h, w) in enumerate(sizes):
        for k in range(2):
            _png(base / f"{i}_c{i}" / f"{k}.png", h, w, seed=10 * i + k)
    return base


def _cards(root: Path) -> Path:
    """``models/``: tiny LeNet classifiers whose cards were edited: ``huge`` (hidden [100000000, 128]) and
    ``fru-bad`` (``base`` "../x")."""
    import torch

    from advshield.models import LeNet, save_checkpoint

    models = root / "models"
    args = {"channels": [4, 8], "hidden": [16, 16]}
    for name, edit in (("huge", {"arch_args": {"channels": [4, 8], "hidden": [100000000, 128]}}),
                       ("fru-bad", {"base": "../x"})):
        torch.manual_seed(0)
        path = models / f"{name}.safetensors"
        save_checkpoint(LeNet(**args), path, {"name": name, "kind": "classifier", "dataset": "fashion-mnist",
                                              "architecture": "lenet", "arch_args": dict(args), "metrics": {}})
        card_file = path.with_suffix(".json")
        card = json.loads(card_file.read_text())
        card.update(edit)
        card_file.write_text(json.dumps(card, indent=2))
    return models


def _link(root: Path) -> Path:
    """``link``: a symlink to the ``tree`` folder (an out-dir that is the source tree in disguise)."""
    _tree(root, "tree", [(28, 28), (28, 28)])
    link = root / "link"
    link.symlink_to(root / "tree", target_is_directory=True)
    return link


def _notjson(root: Path) -> Path:
    path = root / "classes.json"
    path.write_text("this is {not JSON")
    return path


def _notpy(root: Path) -> Path:
    path = root / "net.py"
    path.write_text("this is not Python (\n")
    return path


def _rgb(root: Path) -> Path:
    """``rgb/<word>/<k>.png``: RGB 32×32 images in word-named class folders (cat, dog)."""
    import numpy as np
    from PIL import Image

    base = root / "rgb"
    for i, word in enumerate(("cat", "dog")):
        (base / word).mkdir(parents=True)
        for k in range(2):
            img = np.random.default_rng(10 * i + k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img, "RGB").save(base / word / f"{k}.png")
    return base


USER_NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def needs_args(width):
    return Net()
"""


def _usernet(root: Path) -> Path:
    """``user/net.py`` (class Net: RGB, 2 classes), ``user/net.safetensors`` (its weights),
    ``user/wrong.safetensors`` (a state dict with a wrong shape) and ``user/script.pt`` (TorchScript)."""
    import torch
    from safetensors.torch import save_file

    base = root / "user"
    base.mkdir()
    (base / "net.py").write_text(USER_NET)
    ns: dict[str, Any] = {}
    exec(compile(USER_NET, "net", "exec"), ns)
    torch.manual_seed(0)
    net = ns["Net"]()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(base / "net.safetensors"))
    save_file({**state, "fc.weight": torch.zeros(3, 4)}, str(base / "wrong.safetensors"))
    scripted = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, 2))
    torch.jit.save(torch.jit.script(scripted), str(base / "script.pt"))
    (base / "map-missing.json").write_text(json.dumps({"cat": 0}))
    (base / "map-big.json").write_text(json.dumps({"cat": 0, "dog": 50}))
    return base


def _corrupt(root: Path) -> Path:
    """``corrupt/``: a 2-class gray tree with one file that is not an image."""
    base = _tree(root, "corrupt", [(28, 28), (28, 28)])
    (base / "1_c1" / "broken.png").write_bytes(b"\x89PNG not really")
    return base


SETUPS: dict[str, Callable[[Path], Path]] = {
    "tree": lambda r: _tree(r, "tree", [(28, 28), (28, 28)]),      # 2 classes × 2 gray 28×28 PNGs
    "tiny": lambda r: _tree(r, "tiny", [(28, 28), (1, 1)]),        # class 1 holds 1×1 images
    "odd": lambda r: _tree(r, "odd", [(28, 28), (33, 40)]),        # class 1 holds 33×40 images
    "models": _cards,
    "link": _link,
    "notjson": _notjson,
    "notpy": _notpy,
    "rgb": _rgb,
    "user": _usernet,
    "corrupt": _corrupt,
}


# -- running one case -----------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file (``->target`` for symlinks) under ``root``, links not followed."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "->" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def build(case: Case, root: Path) -> dict[str, str]:
    """Make ``root`` (with an empty ``cwd`` and the case's setups); the placeholder → path map."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cwd").mkdir()
    paths = {"root": root, "out": root / "out", "cwd": root / "cwd"}
    for name in case.setup:
        paths[name] = SETUPS[name](root)
    return {k: str(v) for k, v in paths.items()}


def expand(argv: tuple[str, ...], paths: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in paths.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


def classify(rc: int | None, err: str, created: list[str], changed: list[str], exc: str | None) -> tuple[str, str]:
    if exc is not None:
        return "traceback", exc
    lines = err.splitlines()
    if rc == 0:
        return "accepted", f"exit 0; {len(created)} file(s) written"
    if (rc == 2 and len(lines) == 1 and lines[0].startswith("advshield: error:") and ANSI_ESC not in err
            and not created and not changed):
        return "refused", ""
    why = []
    if rc != 2:
        why.append(f"exit {rc}")
    if len(lines) != 1:
        why.append(f"{len(lines)} stderr lines")
    elif not lines[0].startswith("advshield: error:"):
        why.append("stderr not 'advshield: error: ...'")
    if ANSI_ESC in err:
        why.append("ANSI codes")
    if created:
        why.append(f"{len(created)} file(s) written")
    if changed:
        why.append(f"{len(changed)} input(s) changed")
    return "other", ", ".join(why)


def run_case(case: Case, root: Path) -> Result:
    """Build the case under ``root`` (must not exist yet), run it in-process with ``root/cwd`` as the working
    directory, and classify what happened."""
    from advshield.cli.main import main
    from advshield.errors import AdvshieldError

    paths = build(case, root)
    before = snapshot(root)
    rc: int | None = None
    exc: str | None = None
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(paths["cwd"])
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if case.api is not None:
                try:
                    case.api({k: Path(v) for k, v in paths.items()})
                    rc = 0
                except AdvshieldError as e:
                    print(f"advshield: error: {e}", file=sys.stderr)
                    rc = 2
            else:
                rc = main(expand(case.argv, paths))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001 - that is what is being measured
        exc = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    finally:
        os.chdir(old)
    after = snapshot(root)
    created = sorted(set(after) - set(before))
    changed = sorted(p for p in before if after.get(p) != before[p])
    outcome, detail = classify(rc, err.getvalue(), created, changed, exc)
    tidy = lambda text: text.replace(paths["root"], "{root}")  # noqa: E731 - stable text for the table
    return Result(case.id, outcome, rc, tidy(err.getvalue().strip())[:300], created, changed, tidy(detail))


def run_isolated(case: Case, root: Path, mem_gib: float = 4.0, timeout_s: float = 300.0) -> Result:
    """:func:`run_case` in a forked child with an address-space limit of the current size + ``mem_gib`` GiB and a
    wall-clock limit; a child that dies or overruns counts as a traceback."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target() -> None:
        import resource

        import torch

        torch.set_num_threads(1)
        size = _vm_size()
        if size:
            limit = size + int(mem_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            child.send(asdict(run_case(case, root)))
        except BaseException as e:  # noqa: BLE001
            child.send({"id": case.id, "outcome": "traceback", "rc": None, "stderr": "",
                        "detail": f"{type(e).__name__}: {e}"[:200]})

    proc = ctx.Process(target=target)
    proc.start()
    got = parent.poll(timeout_s)
    res = parent.recv() if got else None
    proc.join(5 if got else 0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if res is None:
        why = f"timed out after {timeout_s:g} s" if proc.exitcode in (None, -9) and not got else \
            f"child died (exit {proc.exitcode})"
        return Result(case.id, "traceback", None, "", detail=why)
    return Result(**res)


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# -- the cases ------------------------------------------------------------------------------------------------
# Base command lines; the bad flag is appended (argparse type-checks every occurrence, so it is refused even
# though a good value comes earlier).
VGG = "zoo:fmnist-vgg"
NRP = "zoo:nrp-fmnist"
BASE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # command → (argv, setups)
    "attack": (("attack", "--attack", "pgd", "--model", VGG, "--source-dir", "{tree}", "--out-dir", "{out}"),
               ("tree",)),
    "ssp": (("ssp", "--model", VGG, "--source-dir", "{tree}", "--out-dir", "{out}", "--iters", "1"), ("tree",)),
    "eval": (("eval", "--models", VGG, "--data", "{tree}", "--attacks", "fgsm", "--defenses", "none",
              "--out", "{out}"), ("tree",)),
    "demo": (("demo", "--out", "{out}", "--n", "4", "--attacks", "fgsm", "--defenses", "none"), ()),
    "report": (("report",), ()),
    "uap": (("uap", "--method", "uap", "--model", VGG, "--data", "{tree}", "--eps", "10", "--iters", "1",
             "--out", "{out}/d.npy"), ("tree",)),
    "purify": (("purify", "--dir", "{tree}", "--out-dir", "{out}", "--purifier", NRP, "--dynamic"), ("tree",)),
    "bypass": (("bypass", "--test-dir", "{tree}", "--purifier", NRP, "--model", VGG, "--steps", "1",
                "--out", "{out}/r.json"), ("tree",)),
    "train classifier": (("train", "classifier", "--name", "c", "--arch", "lenet", "--epochs", "1",
                          "--out-dir", "{out}"), ()),
    "train purifier": (("train", "purifier", "--name", "p", "--data", "{tree}", "--steps", "1",
                        "--out-dir", "{out}"), ("tree",)),
    "train autoencoder": (("train", "autoencoder", "--name", "a", "--steps", "1", "--out-dir", "{out}"), ()),
    "train fru": (("train", "fru", "--model", VGG, "--steps", "1", "--out-dir", "{out}"), ()),
    "data export": (("data", "export", "--n", "4", "--out", "{out}"), ()),
}

_ids: Counter = Counter()


def bad(command: str, *extra: str, tries: str, setup: tuple[str, ...] = (), owner: str = "") -> Case:
    """``command``'s base command line plus ``extra``."""
    argv, setups = BASE[command]
    key = f"{command.replace(' ', '-')} {' '.join(extra)}".strip()
    key = "".join(c if c.isprintable() else "?" for c in key)[:80]
    _ids[key] += 1
    cid = key if _ids[key] == 1 else f"{key} #{_ids[key]}"
    return Case(cid, tries, (*argv, *extra), setup=tuple(dict.fromkeys(setups + setup)), owner=owner)


def _cases() -> list[Case]:
    c: list[Case] = []
    linf_eps = {"attack": "--eps", "ssp": "--eps", "eval": "--eps", "demo": "--eps", "uap": "--eps",
                "purify": "--eps", "bypass": "--eps", "train purifier": "--eps", "train fru": "--eps",
                "train autoencoder": "--eval-eps"}
    for cmd, flag in linf_eps.items():
        for v, what in (("nan", "NaN budget"), ("inf", "infinite budget"), ("0", "zero budget"),
                        ("-3", "negative budget"), ("abc", "not a number")):
            c.append(bad(cmd, flag, v, tries=what))
    for cmd in ("eval", "demo", "purify", "bypass", "train purifier", "train autoencoder", "uap"):
        flag = linf_eps[cmd]
        c.append(bad(cmd, flag, "300", tries="L∞ budget above 255 (more than the pixel range)"))
    c += [
        bad("attack", "--eps", "1e400", tries="budget that overflows to inf"),
        bad("attack", "--eps", "-inf", tries="negative infinite budget (looks like a flag)"),
        bad("bypass", "--noise-eps", "nan", tries="NaN noise bound"),
        bad("bypass", "--noise-eps", "0", tries="zero noise bound"),
        bad("eval", "--eps-l2", "nan", tries="NaN L2 budget"),
        bad("eval", "--eps-sweep", "8,0", tries="a zero budget in the eps sweep"),
        bad("eval", "--eps-sweep", "8,nan", tries="a NaN budget in the eps sweep"),
        bad("eval", "--eps-sweep", ",", tries="an empty eps sweep"),
        bad("eval", "--eps-sweep", "300", tries="a sweep budget above 255"),
        bad("eval", "--examples", "-1", tries="a negative number of example images"),
        bad("eval", "--examples", "100000", tries="100000 example images"),
        bad("report", "{tree}", setup=("tree",), tries="a folder of images, not a result directory"),
        bad("report", "{out}/missing", tries="a result directory that does not exist"),
        bad("eval", "--eps-l2", "0", tries="zero L2 budget"),
        bad("train purifier", "--eps-min", "-1", tries="negative minimum budget"),
        bad("train autoencoder", "--eps-min", "nan", tries="NaN minimum budget"),
        bad("train autoencoder", "--eps-max", "0", tries="zero maximum budget"),
        # step sizes
        bad("attack", "--alpha", "inf", tries="infinite step"),
        bad("attack", "--alpha", "0", tries="zero step"),
        bad("ssp", "--alpha", "nan", tries="NaN step"),
        bad("bypass", "--alpha", "-2", tries="negative step"),
        bad("train purifier", "--ssp-alpha", "nan", tries="NaN SSP step"),
        # iteration counts
        bad("attack", "--steps", "0", tries="zero steps"),
        bad("attack", "--steps", "-3", tries="negative steps"),
        bad("attack", "--steps", "2.5", tries="fractional steps"),
        bad("ssp", "--iters", "0", tries="zero iterations"),
        bad("bypass", "--steps", "0", tries="zero steps"),
        bad("bypass", "--eot", "0", tries="zero EOT samples"),
        bad("uap", "--iters", "-3", tries="negative iterations"),
        bad("train purifier", "--steps", "0", tries="zero training steps"),
        bad("train classifier", "--epochs", "0", tries="zero epochs"),
        bad("train autoencoder", "--pgd-steps", "nan", tries="NaN PGD steps"),
        # probabilities, fractions, sigma
        bad("purify", "--sigma", "2", tries="sigma above 1 (image units)"),
        bad("purify", "--sigma", "nan", tries="NaN sigma"),
        bad("bypass", "--sigma", "-0.1", tries="negative sigma"),
        bad("attack", "--diversity-prob", "1.5", tries="probability above 1"),
        bad("attack", "--diversity-prob", "nan", tries="NaN probability"),
        bad("attack", "--decay", "nan", tries="NaN momentum decay"),
        bad("attack", "--resize-rate", "0", tries="zero resize rate"),
        bad("attack", "--nsig", "inf", tries="infinite kernel radius"),
        bad("attack", "--len-kernel", "0", tries="zero kernel size"),
        bad("attack", "--len-kernel", "1000000", tries="kernel of 10^12 values"),
        bad("train purifier", "--clean-fraction", "1.5", tries="fraction above 1"),
        bad("train autoencoder", "--clean-fraction", "nan", tries="NaN fraction"),
        bad("train fru", "--fraction", "nan", tries="NaN filter share"),
        bad("train fru", "--zoom", "2", tries="share above 1"),
        bad("train fru", "--negate", "-1", tries="negative share"),
        # learning rates and loss weights
        bad("train classifier", "--lr", "nan", tries="NaN learning rate"),
        bad("train purifier", "--lr", "0", tries="zero learning rate"),
        bad("train autoencoder", "--lr", "-1", tries="negative learning rate"),
        bad("train fru", "--lr", "inf", tries="infinite learning rate"),
        bad("train purifier", "--gamma-img", "nan", tries="NaN loss weight"),
        bad("train purifier", "--alpha-adv", "-1", tries="negative loss weight"),
        bad("train autoencoder", "--beta", "nan", tries="NaN KL weight"),
        bad("train autoencoder", "--guide", "inf", tries="infinite guide weight"),
        # sizes that would allocate absurd memory, counts, seeds, devices
        bad("attack", "--batch-size", "0", tries="zero batch size"),
        bad("train purifier", "--batch-size", "1000000000", tries="a billion images per batch"),
        bad("train purifier", "--crop", "100000", tries="crop of 10^10 pixels"),
        bad("train purifier", "--critic-width", "10000000", tries="critic of absurd width"),
        bad("train purifier", "--workers", "100000", tries="100000 worker processes"),
        bad("eval", "--workers", "-1", tries="negative reader count"),
        bad("train purifier", "--amp", "fp8", tries="unknown mixed precision"),
        bad("train classifier", "--accum", "0", tries="zero accumulation steps"),
        bad("train autoencoder", "--accum", "7", tries="accumulation parts that do not divide the batch"),
        bad("train fru", "--accum", "1000", tries="more accumulation parts than images in a batch"),
        bad("train autoencoder", "--latent-dim", "1000000000", tries="latent of 10^9 values"),
        bad("train fru", "--depth", "1000000000", tries="FRU of absurd depth"),
        bad("train fru", "--pool-size", "1000000000", tries="a billion pool perturbations"),
        bad("uap", "--size", "1000000", tries="resize images to 10^6 × 10^6"),
        bad("uap", "--n", "0", tries="zero images"),
        bad("uap", "--held-out", "-1", tries="negative held-out count"),
        bad("data export", "--n", "0", tries="zero images"),
        bad("attack", "--threads", "0", tries="zero threads"),
        bad("eval", "--threads", "100000", tries="100000 threads"),
        bad("attack", "--seed", "-1", tries="negative seed"),
        bad("ssp", "--seed", str(2**64), tries="seed that overflows torch"),
        bad("bypass", "--seed", "nan", tries="NaN seed"),
        bad("attack", "--device", "nope", tries="unknown device"),
        bad("purify", "--device", "cuda:99", tries="GPU that is not there"),
        # lists
        bad("eval", "--models", ",", tries="empty model list"),
        bad("eval", "--sources", " , ", tries="empty source list"),
        bad("eval", "--attacks", ",", tries="empty attack list"),
        bad("eval", "--perturbations", ",", tries="empty perturbation list"),
        bad("demo", "--models", ",", tries="empty model list"),
        bad("attack", "--ensemble", ",", tries="empty ensemble"),
        bad("train autoencoder", "--attacks", ",", tries="empty attack list"),
        bad("train fru", "--layers", ",", tries="empty layer list"),
        # names that are paths
        bad("train classifier", "--name", "../x", tries="name escaping --out-dir"),
        bad("train classifier", "--name", "a/b", tries="name with a directory"),
        bad("train purifier", "--name", "../x", tries="name escaping --out-dir"),
        bad("train purifier", "--name", "", tries="empty name"),
        bad("train autoencoder", "--name", "a\\b", tries="name with a backslash"),
        bad("train autoencoder", "--name", ".hidden", tries="hidden-file name"),
        bad("train fru", "--name", "../x", tries="name escaping --out-dir"),
        bad("train fru", "--name", "x" * 201, tries="201-character name"),
        bad("train fru", "--name", "a\x00b", tries="name with a NUL"),
        # choices, unknown and missing flags
        bad("bypass", "--mode", "nope", tries="unknown mode"),
        bad("ssp", "--distance", "l3", tries="unknown distance"),
        bad("uap", "--norm", "l3", tries="unknown norm"),
        bad("eval", "--split", "val", tries="unknown split"),
        bad("attack", "--targeted", "yes", tries="unknown target mode"),
        bad("attack", "--epz", "3", tries="misspelt flag"),
        bad("eval", "--bogus", tries="unknown flag"),
        Case("unknown-command", "misspelt command", ("atack", "--eps", "8")),
        Case("unknown-subcommand", "misspelt sub-command", ("train", "clasifier")),
        Case("list-unknown", "unknown registry", ("list", "nope")),
        Case("no-command", "no command at all", ()),
        Case("attack-missing-dirs", "missing required flags", ("attack", "--attack", "pgd", "--model", VGG)),
        Case("bypass-missing-model", "missing --model", ("bypass", "--test-dir", "{tree}", "--purifier", NRP),
             setup=("tree",)),
        Case("uap-missing-eps", "missing --eps", ("uap", "--method", "uap", "--model", VGG, "--out", "{out}/d.npy")),
        Case("eval-missing-models", "missing --models", ("eval", "--out", "{out}")),
        Case("purify-missing-purifier", "missing --purifier", ("purify", "--dir", "{tree}", "--out-dir", "{out}"),
             setup=("tree",)),
        Case("eps-without-value", "flag without its value", ("attack", "--eps")),
    ]
    return c


def _api_class_map(p: dict[str, Path]) -> Any:
    from advshield.data.folder import image_folder

    return image_folder(p["tree"], class_map=p["notjson"])


def _api_zoo_dotdot(p: dict[str, Path]) -> Any:
    from advshield.models import load_model

    return load_model("zoo:../x")


def _api_huge_card(p: dict[str, Path]) -> Any:
    from advshield.models import load_model

    return load_model(str(p["models"] / "huge.safetensors"))


def _user_cases() -> list[Case]:
    """Your model, your data: specs, labels, domains, defenses, odd images (were PENDING_CASES)."""
    imgs = "data/imagetree, data/folder: image-size checks before any output"
    c: list[Case] = []
    for setup, what in (("tiny", "a 1×1 image"), ("odd", "a 33×40 image")):
        c += [
            Case(f"ssp {setup}", f"{what} beside 28×28 ones", ("ssp", "--model", VGG, "--source-dir", "{" + setup
                 + "}", "--out-dir", "{out}", "--iters", "1"), setup=(setup,), owner=imgs),
            Case(f"attack {setup}", f"{what} beside 28×28 ones", ("attack", "--attack", "fgsm", "--model", VGG,
                 "--source-dir", "{" + setup + "}", "--out-dir", "{out}"), setup=(setup,), owner=imgs),
            Case(f"bypass {setup}", f"{what} beside 28×28 ones", ("bypass", "--test-dir", "{" + setup + "}",
                 "--purifier", NRP, "--model", VGG, "--steps", "1", "--out", "{out}/r.json"), setup=(setup,),
                 owner=imgs),
            Case(f"uap {setup}", f"{what} beside 28×28 ones", ("uap", "--method", "uap", "--model", VGG, "--data",
                 "{" + setup + "}", "--eps", "10", "--iters", "1", "--out", "{out}/d.npy"), setup=(setup,),
                 owner=imgs),
        ]
    c += [
        bad("attack", "--eps", "300", tries="L∞ budget above 255 (flag also takes L2 budgets)",
            owner="cli/attack body: refuse L∞ eps > 255"),
        bad("ssp", "--eps", "300", tries="L∞ budget above 255 (shared flag also takes L2 budgets)",
            owner="cli/attack body or attacks/ssp: refuse eps > 255"),
        bad("train fru", "--eps", "300", tries="L∞ budget above 255 (flag also takes L2 budgets)",
            owner="train/fru check_config: L∞ eps <= 1"),
        Case("attack zoo:/abs/path", "zoo spec that is an absolute path", ("attack", "--attack", "fgsm", "--model",
             "zoo:{root}/models/fru-bad", "--source-dir", "{tree}", "--out-dir", "{out}"), setup=("tree", "models"),
             owner="models/zoo: zoo names only"),
        Case("eval zoo:../x", "zoo spec that climbs out of the zoo", ("eval", "--models", "zoo:../x", "--data",
             "{tree}", "--attacks", "fgsm", "--defenses", "none", "--out", "{out}"), setup=("tree",),
             owner="models/zoo: zoo names only"),
        Case("eval card hidden 1e8", 'card with "hidden": [100000000, 128]', ("eval", "--models",
             "{root}/models/huge.safetensors", "--data", "{tree}", "--attacks", "fgsm", "--defenses", "none",
             "--out", "{out}"), setup=("tree", "models"), owner="models/checkpoint: bound arch_args from cards"),
        Case("eval FRU base ../x", "FRU card whose base is ../x", ("eval", "--models",
             "{root}/models/fru-bad.safetensors", "--data", "{tree}", "--attacks", "fgsm", "--defenses", "none",
             "--out", "{out}"), setup=("tree", "models"), owner="models/checkpoint or cli/eval: base is a zoo name"),
        Case("attack out-dir symlink", "out-dir: a symlink to the source tree", ("attack", "--attack", "fgsm",
             "--model", VGG, "--source-dir", "{tree}", "--out-dir", "{link}"), setup=("tree", "link"),
             owner="data/imagetree check_dirs"),
        Case("attack out-dir symlink/sub", "out-dir inside a symlink to the source tree", ("attack", "--attack",
             "fgsm", "--model", VGG, "--source-dir", "{tree}", "--out-dir", "{link}/adv"),
             setup=("tree", "link"), owner="data/imagetree check_dirs"),
        Case("attack py:missing", "py: model file that does not exist", ("attack", "--attack", "fgsm", "--model",
             "py:{root}/missing.py:Net", "--source-dir", "{tree}", "--out-dir", "{out}"), setup=("tree",),
             owner="models/specs"),
        Case("attack py:not-python", "py: model file that is not Python", ("attack", "--attack", "fgsm",
             "--model", "py:{notpy}:Net", "--source-dir", "{tree}", "--out-dir", "{out}"),
             setup=("tree", "notpy"), owner="models/specs"),
        Case("attack --labels nope", "--labels with an invalid value", ("attack", "--attack", "fgsm", "--model",
             VGG, "--source-dir", "{tree}", "--out-dir", "{out}", "--labels", "nope"), setup=("tree",),
             owner="cli/attack --labels (data/labels)"),
        Case("attack --class-map not JSON", "a class map that is not JSON", ("attack", "--attack", "fgsm",
             "--model", VGG, "--source-dir", "{tree}", "--out-dir", "{out}", "--class-map", "{notjson}"),
             setup=("tree", "notjson"), owner="cli/attack --class-map (data/labels)"),
        Case("api image_folder class map not JSON", "image_folder(class_map=FILE) with a file that is not JSON",
             api=_api_class_map, setup=("tree", "notjson"), owner="data/labels"),
        Case("api load_model zoo:../x", "load_model('zoo:../x')", api=_api_zoo_dotdot, owner="models/zoo"),
        Case("api load_model huge card", 'load_model of a card with "hidden": [100000000, 128]',
             api=_api_huge_card, setup=("models",), owner="models/checkpoint"),
    ]
    return c


USER = "py:{user}/net.py:Net@{user}/net.safetensors"


def _more_cases() -> list[Case]:
    """Model specs, labels, channel/size domains and defense specs on the command line."""
    def atk(*extra: str, setup: tuple[str, ...] = ("rgb", "user"), src: str = "{rgb}") -> tuple[str, ...]:
        return ("attack", "--attack", "fgsm", "--source-dir", src, "--out-dir", "{out}", *extra)

    def case(cid: str, tries: str, argv: tuple[str, ...], setup: tuple[str, ...] = ("rgb", "user")) -> Case:
        return Case(cid, tries, argv, setup=setup)

    return [
        case("attack gray model on RGB", "1-channel zoo model on RGB images, no --adapt-channels",
             atk("--model", VGG)),
        case("attack zoo model on 32x32", "28×28 zoo model on 32×32 images with --adapt-channels, no --size",
             atk("--model", VGG, "--adapt-channels")),
        case("attack --size 0", "zero image size", atk("--model", USER, "--size", "0")),
        case("attack --size 1 2 3", "three sizes", atk("--model", USER, "--size", "1", "2", "3")),
        case("attack py: wrong shape", "weights whose fc.weight has the wrong shape",
             atk("--model", "py:{user}/net.py:Net@{user}/wrong.safetensors")),
        case("attack py: missing name", "py: file without the named class", atk("--model", "py:{user}/net.py:Nope")),
        case("attack py: needs arguments", "py: factory with a required argument",
             atk("--model", "py:{user}/net.py:needs_args")),
        case("attack py: missing weights", "py: weights file that does not exist",
             atk("--model", "py:{user}/net.py:Net@{user}/none.safetensors")),
        case("attack --std 0", "zero std", atk("--model", USER, "--mean", "0.5", "--std", "0")),
        case("attack --mean nan", "NaN mean", atk("--model", USER, "--mean", "nan")),
        case("attack --mean 3 values 2 std", "mean and std of different lengths",
             atk("--model", USER, "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2")),
        case("attack --mean with zoo", "--mean for a zoo model (normalises inside)",
             atk("--model", VGG, "--mean", "0.5", "--adapt-channels", "--size", "28", "28")),
        case("attack timm: missing", "timm: without timm installed", atk("--model", "timm:resnet18")),
        case("attack torchvision: missing", "torchvision: without torchvision installed",
             atk("--model", "torchvision:resnet18")),
        case("attack hf: not a dir", "hf: folder that does not exist", atk("--model", "hf:{root}/nothing")),
        case("ssp torchscript --layer", "TorchScript model where hooks are needed",
             ("ssp", "--model", "torchscript:{user}/script.pt", "--layer", "0", "--source-dir", "{rgb}",
              "--out-dir", "{out}")),
        case("attack class map lacks a folder", "class map without the dog folder",
             atk("--model", USER, "--class-map", "{user}/map-missing.json")),
        case("attack class index too big", "class map giving index 50 to a 2-class model",
             atk("--model", USER, "--class-map", "{user}/map-big.json")),
        case("attack --labels folder on flat tree", "--labels folder on a tree without class folders",
             atk("--model", USER, "--labels", "folder", src="{rgb}/cat")),
        case("attack --class-map with --labels model", "a class map with labels from the model",
             atk("--model", USER, "--labels", "model", "--class-map", "{user}/map-big.json")),
        case("attack corrupt image", "a file that is not an image", atk("--model", VGG, src="{corrupt}"),
             setup=("corrupt",)),
        case("attack out-dir = source", "--out-dir the source tree itself", ("attack", "--attack", "fgsm",
             "--model", USER, "--source-dir", "{rgb}", "--out-dir", "{rgb}")),
        case("attack out-dir inside source", "--out-dir inside the source tree", ("attack", "--attack", "fgsm",
             "--model", USER, "--source-dir", "{rgb}", "--out-dir", "{rgb}/cat/adv")),
        case("eval gray model on RGB", "eval of a 1-channel model on RGB data",
             ("eval", "--models", VGG, "--data", "{rgb}", "--attacks", "fgsm", "--out", "{out}")),
        case("eval explicit gray purifier on RGB", "--defenses ae (1-channel purifier) on RGB data",
             ("eval", "--models", USER, "--data", "{rgb}", "--attacks", "fgsm", "--defenses", "none,ae",
              "--out", "{out}")),
        case("eval --defenses jpeg:quality=500", "JPEG quality out of range",
             ("eval", "--models", USER, "--data", "{rgb}", "--attacks", "fgsm", "--defenses", "jpeg:quality=500",
              "--out", "{out}")),
        case("eval --defenses jpeg:bogus=1", "unknown defense setting",
             ("eval", "--models", USER, "--data", "{rgb}", "--attacks", "fgsm", "--defenses", "jpeg:bogus=1",
              "--out", "{out}")),
        case("eval --defenses median:window=4", "even median window",
             ("eval", "--models", USER, "--data", "{rgb}", "--attacks", "fgsm", "--defenses", "median:window=4",
              "--out", "{out}")),
        case("eval --labels model on fashion-mnist", "--labels model for a dataset with its own labels",
             ("eval", "--models", VGG, "--labels", "model", "--attacks", "fgsm", "--n", "4", "--out", "{out}")),
        case("eval --models twice", "the same model twice",
             ("eval", "--models", f"{USER},{USER}", "--data", "{rgb}", "--attacks", "fgsm", "--out", "{out}")),
        case("purify gray purifier on RGB", "zoo:ae-fmnist on RGB images, no --adapt-channels",
             ("purify", "--dir", "{rgb}", "--out-dir", "{out}", "--purifier", "zoo:ae-fmnist")),
        case("purify diffpure on RGB", "the 1-channel DiffPure denoiser on RGB images, no --adapt-channels",
             ("purify", "--dir", "{rgb}", "--out-dir", "{out}", "--purifier", "diffpure")),
        case("purify --purifier diffpure:t_star=0", "DiffPure noised to timestep 0",
             ("purify", "--dir", "{tree}", "--out-dir", "{out}", "--purifier", "diffpure:t_star=0"), ("tree",)),
        case("purify --purifier diffpure:steps=500", "more reverse steps than t*",
             ("purify", "--dir", "{tree}", "--out-dir", "{out}", "--purifier", "diffpure:steps=500"), ("tree",)),
        case("eval --defenses zoo:fmnist-vgg", "a classifier checkpoint named as a defense",
             ("eval", "--models", VGG, "--data", "{tree}", "--attacks", "fgsm", "--defenses", "zoo:fmnist-vgg",
              "--out", "{out}"), ("tree",)),
        case("purify --purifier nope", "unknown defense", ("purify", "--dir", "{rgb}", "--out-dir", "{out}",
             "--purifier", "nope")),
        case("purify --purifier jpeg:quality=0", "JPEG quality 0", ("purify", "--dir", "{rgb}", "--out-dir",
             "{out}", "--purifier", "jpeg:quality=0")),
        case("purify --purifier a classifier", "a classifier given as purifier", ("purify", "--dir", "{rgb}",
             "--out-dir", "{out}", "--purifier", VGG)),
        case("bypass gray purifier on RGB", "1-channel purifier + RGB model on RGB images",
             ("bypass", "--test-dir", "{rgb}", "--purifier", NRP, "--model", USER, "--steps", "1")),
    ]


def _api(fn: Callable[[dict[str, Path]], Any], cid: str, tries: str, setup: tuple[str, ...] = ()) -> Case:
    return Case(cid, tries, api=fn, setup=setup)


def _tiny_model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3))


def _pgd(x: Any = None, y: Any = None, **kw: Any) -> Any:
    import torch

    from advshield.attacks import PGD

    x = torch.rand(2, 3, 8, 8) if x is None else x
    return PGD(_tiny_model(), **{"eps": 8 / 255, **kw})(x, y)


def _api_cases() -> list[Case]:
    """Bad library calls: each must raise AdvshieldError (a ValueError) naming the argument."""
    import torch

    def evaluate_l2(p: dict[str, Path]) -> Any:
        from advshield.eval.grid import evaluate

        return evaluate(_tiny_model(), (torch.rand(2, 3, 8, 8), torch.tensor([0, 1])), ["pgdl2"], ["none"], 0.1)

    def evaluate_labels(p: dict[str, Path]) -> Any:
        from advshield.eval.grid import evaluate

        return evaluate(_tiny_model(), (torch.rand(2, 3, 8, 8), torch.tensor([0, 7])), ["fgsm"], ["none"], 0.1)

    def defend_gray_on_rgb(p: dict[str, Path]) -> Any:
        import advshield

        return advshield.defend(_tiny_model(), "ae")(torch.rand(2, 3, 28, 28))

    def py_wrong_shape(p: dict[str, Path]) -> Any:
        from advshield.models import load_model

        return load_model(f"py:{p['user']}/net.py:Net@{p['user']}/wrong.safetensors")

    def spec_bad(p: dict[str, Path]) -> Any:
        from advshield.defenses import build_defense

        return build_defense("jpeg:quality=0")

    def uap_bad_eps(p: dict[str, Path]) -> Any:
        from advshield.attacks import UAP

        return UAP(_tiny_model(), eps=float("nan"))

    return [
        _api(lambda p: _pgd(eps=float("nan")), "api PGD eps nan", "PGD(eps=nan)"),
        _api(lambda p: _pgd(eps=2.0), "api PGD eps 2", "PGD(eps=2) (L∞ above the pixel range)"),
        _api(lambda p: _pgd(steps=-3), "api PGD steps -3", "PGD(steps=-3)"),
        _api(lambda p: _pgd(alpha=float("inf")), "api PGD alpha inf", "PGD(alpha=inf)"),
        _api(lambda p: _pgd(x=torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)), "api PGD uint8 x",
             "uint8 images"),
        _api(lambda p: _pgd(x=torch.rand(2, 3, 8, 8) * 255), "api PGD x in [0,255]", "float images in [0,255]"),
        _api(lambda p: _pgd(x=torch.full((2, 3, 8, 8), float("nan"))), "api PGD NaN x", "NaN images"),
        _api(lambda p: _pgd(x=torch.rand(3, 8, 8)), "api PGD 3-D x", "one image without the batch axis"),
        _api(lambda p: _pgd(y=torch.tensor([0, 9])), "api PGD y out of range", "label 9 for a 3-class model"),
        _api(lambda p: _pgd(y=torch.tensor([0.0, 1.0])), "api PGD float y", "float labels"),
        _api(lambda p: _pgd(y=torch.tensor([0])), "api PGD y too short", "one label for two images"),
        _api(uap_bad_eps, "api UAP eps nan", "UAP(eps=nan)"),
        _api(evaluate_l2, "api evaluate L2 without eps_l2", "an L2 attack without eps_l2"),
        _api(evaluate_labels, "api evaluate label out of range", "label 7 for a 3-class model"),
        _api(defend_gray_on_rgb, "api defend gray purifier on RGB", 'defend(rgb_model, "ae") on RGB images'),
        _api(py_wrong_shape, "api load_model py: wrong shape", "py: weights with a wrong shape", setup=("user",)),
        _api(spec_bad, "api build_defense jpeg:quality=0", 'build_defense("jpeg:quality=0")'),
    ]


CASES: list[Case] = _cases() + _user_cases() + _more_cases() + _api_cases()
PENDING_CASES: list[Case] = []


# -- the benchmark ----------------------------------------------------------------------------------------------
def _cell(text: str, limit: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _argv_text(case: Case) -> str:
    if case.api is not None:
        return "(API) " + case.tries
    shown = [a if a.isprintable() else repr(a) for a in case.argv]
    shown = [a if len(a) <= 40 else a[:12] + f"…({len(a)} chars)" for a in shown]
    return "advshield " + " ".join(shown)


def report(results: list[tuple[Case, Result, bool]], seconds: float) -> str:
    from _results import machine

    def totals(rows: list[tuple[Case, Result, bool]]) -> str:
        n = Counter(r.outcome for _, r, _ in rows)
        changed = sum(bool(r.changed) for _, r, _ in rows)
        wrote = sum(bool(r.created) for _, r, _ in rows)
        return (f"{len(rows)} cases: {n['refused']} refused, {n['traceback']} tracebacks, {n['accepted']} silent "
                f"wrong results (exit 0), {n['other']} other; {wrote} wrote files, {changed} changed inputs")

    main_rows = [t for t in results if not t[2]]
    pending_rows = [t for t in results if t[2]]
    lines = [
        "## Bad inputs: what the command line does with them",
        "",
        "Command: `.venv/bin/python benchmarks/bad_inputs.py` (the cases are `CASES` and `PENDING_CASES` in that "
        "file; `tests/test_bad_inputs.py` requires every one of `CASES` to be refused).",
        f"Machine: {machine()}; {seconds:.0f} s.",
        "",
        "Each case runs `advshield.cli.main.main(argv)` in-process (in a forked child with a memory and time "
        "limit) inside a fresh temporary directory holding small PNG trees; `{tree}` is 2 classes × 2 gray 28×28 "
        "images, `{tiny}`/`{odd}` put 1×1 / 33×40 images beside 28×28 ones, `{rgb}` is RGB 32×32 images in "
        "word-named class folders, `{user}` a user's `net.py` with its weights. API cases call the library "
        "directly; for them *refused* means an `AdvshieldError` (a `ValueError`) naming the argument. "
        "*refused* = exit code 2, one stderr "
        "line `advshield: error: ...`, no file written, no input changed (hashed before and after). Goal: 0 "
        "tracebacks, 0 silent wrong results, 0 overwritten inputs.",
        "",
        f"**Totals, CASES:** {totals(main_rows)}.",
        "",
        *([f"**Totals, PENDING_CASES (owned elsewhere):** {totals(pending_rows)}.", ""] if pending_rows else []),
        f"**All:** {totals(results)}.",
        "",
        "| case | tries | command | outcome | stderr / detail | pending: owner |",
        "|:---|:---|:---|:---|:---|:---|",
    ]
    for case, res, pending in results:
        msg = res.detail if res.outcome != "refused" else res.stderr
        if res.outcome == "other" and res.stderr:
            msg = f"{res.detail}: {res.stderr}"
        if pending and "unrecognized arguments" in res.stderr:
            msg = "(the flag does not exist yet) " + msg
        lines.append(f"| `{_cell(case.id, 60)}` | {_cell(case.tries, 60)} | `{_cell(_argv_text(case))}` | "
                     f"{res.outcome} | {_cell(msg, 140)} | {_cell(case.owner, 60) if pending else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse
    import tempfile
    import time

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-write", action="store_true", help="print the table, do not touch docs/RESULTS.md")
    p.add_argument("--only-pending", action="store_true", help="run PENDING_CASES only")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    todo = [(c, True) for c in PENDING_CASES] if args.only_pending else \
        [(c, False) for c in CASES] + [(c, True) for c in PENDING_CASES]
    t0 = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="advshield-bad-") as tmp:
        for i, (case, pending) in enumerate(todo):
            res = run_isolated(case, Path(tmp) / f"case{i}")
            results.append((case, res, pending))
            print(f"{res.outcome:9s} {case.id}: {res.detail or res.stderr}"[:200], flush=True)
    text = report(results, time.time() - t0)
    if args.no_write or args.only_pending:
        print(text)
    else:
        from _results import update_section

        update_section("bad-inputs", text)
        print("wrote the bad-inputs section of docs/RESULTS.md")


if __name__ == "__main__":
    main()
