"""Write one named section of docs/RESULTS.md, leaving the other sections as they are."""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md"
HEADER = ("# advshield results\n\nEvery number here was produced by a committed script under `benchmarks/`; the "
          "command that produced it is given with each section. Machine: see each section.\n")


def update_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{body.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def machine() -> str:
    import os
    import platform

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def audit_cached(cache: str | Path, name: str, settings: dict, run=None) -> dict | None:
    """The JSON document of one audit cell: read from ``cache/name-KEY.json`` when an earlier run with the same
    ``settings`` stored it, else ``run()`` (→ AuditResult) now, timed, and stored — so a stopped benchmark resumes
    where it was and a re-run only re-renders. ``settings``: everything the result depends on (JSON-able);
    ``run=None``: only look in the cache (None when the cell was never run). Under torchrun only rank 0 writes."""
    import hashlib
    import json
    import time

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache) / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if run is None:
        return None
    from advshield import distributed

    t0 = time.time()
    doc = {**run().to_json(), **settings, "seconds": round(time.time() - t0, 1), "machine": machine(),
           "processes": distributed.world()[1]}
    if not distributed.is_main():  # under torchrun every rank computes its blocks; rank 0 stores the cell
        return doc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return doc


def fit_cached(cache: Path, key: dict, model, images, log=print):
    """The universal perturbation of ``key`` (method, eps, eps_255, seed, model, fit_images, optional max_passes):
    from ``cache`` when fitted with the same settings before, else fitted now on ``images`` (N×C×H×W in [0,1]) and
    stored (.npy + .json). Returns the C×H×W perturbation."""
    import inspect
    import json
    import time

    from advshield.attacks.universal import load_perturbation, save_perturbation
    from advshield.registry import UNIVERSAL

    name = "-".join(str(key[k]) for k in ("model", "method", "eps_255", "seed", "fit_images"))
    npy, meta = cache / f"{name}.npy", cache / f"{name}.json"
    if npy.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
        return load_perturbation(npy)
    t0 = time.time()
    cls = UNIVERSAL.get(key["method"])
    params = inspect.signature(cls).parameters
    kw = {k: key[k] for k in ("max_passes",) if k in params and k in key}
    if "show_progress" in params:
        kw["show_progress"] = False
    delta = cls(model, eps=key["eps"], norm="linf", seed=key["seed"], **kw).fit(images)
    cache.mkdir(parents=True, exist_ok=True)
    save_perturbation(npy, delta)
    meta.write_text(json.dumps({"key": key, "fit_time_s": round(time.time() - t0, 1)}, indent=1))
    log(f"  fitted {name} in {time.time() - t0:.0f}s")
    return delta


# display names of the transfer attacks in the tables
ATTACK_LABELS = {"fgsm": "FGSM", "rfgsm": "R-FGSM", "bim": "I-FGSM", "mifgsm": "MI-FGSM", "mi-di": "DIM", "ssp": "SSP",
                 "mi-di-ti": "DIM-TI"}

Rows = dict  # {(attack, source, defense, target): metric row}


def run_engine(engine, data, batch_size: int):
    """The engine's loop over ``data`` (a TensorDataset) in batches; labels drive the untargeted attacks."""
    return engine.run(data.batches(batch_size), total=-(-len(data) // batch_size))


def keyed(*results) -> Rows:
    """{(attack, source, defense, target): metric row} over several engine runs (GridResults)."""
    return {(r["attack"], r["source"], r["defense"], r["target"]): r for res in results for r in res.rows()}


def pct(v: float | None) -> str:
    """A [0,1] fraction as a percentage with one decimal; '–' for None or NaN."""
    return "–" if v is None or v != v else f"{100 * v:.1f}"


def eot_rule_note(cells) -> list[str]:
    """Markdown lines naming the randomized audit cells measured before APGD's EOT rule 2 (``meta["eot_rule"]``
    absent), or []. ``cells``: (label, audit document or None) pairs."""
    old = [label for label, c in cells if c and c["meta"].get("randomized") and c["meta"].get("eot_rule", 1) < 2]
    if not old:
        return []
    return ["", f"**Measured with the earlier EOT rule:** {', '.join(old)}. Since commit 5441e3f APGD with EOT keeps "
            "ascending after a point fools some of a step's draws and stops a sample only when a point fools all of "
            "them (closer to the authors' implementation); these cells used the earlier rule, which stopped at the "
            "first point fooling one draw, whose points fool fewer draws; the `eot-rule` section re-measures two such "
            "cells under the new rule to show how much the numbers move (delete a cell's file under the cache to "
            "re-measure it)."]
