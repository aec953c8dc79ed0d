"""Write a result's files: the data (:func:`advshield.eval.results.save_results`: report.json, flags.safetensors,
examples.safetensors) and the two readable views built from it (report.md, report.html); :func:`rebuild` makes the
views again from the saved files of a directory without recomputing anything."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdvshieldError
from ..eval.results import GridResults, quantize, save_results
from ..utils import atomic_path, to_json_text, write_text
from .html import audit_html, grid_html
from .tables import grid_report


def write_report(res: GridResults, out_dir: str | Path, title: str, notes: Sequence[str] = (),
                 command: str | None = None) -> dict[str, Path]:
    """Save ``res`` into ``out_dir`` and write report.md and report.html next to it (each file atomically). The
    title, notes and command are kept in ``meta["report"]`` so :func:`rebuild` gives the same pages. Returns
    kind → path ("json", "flags", "examples" when kept, "markdown", "html")."""
    res.meta["report"] = {"title": title, "notes": list(notes), "command": command or res.meta.get("command")}
    paths = save_results(res, out_dir)
    return {**paths, **_views(res, Path(out_dir))}


def _views(res: GridResults, out: Path) -> dict[str, Path]:
    r = res.meta.get("report") or {}
    title, notes, command = r.get("title", "advshield evaluation"), r.get("notes", []), r.get("command")
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    write_text(paths["markdown"], grid_report(res, title, notes))
    write_text(paths["html"], grid_html(res, title, notes, command))
    return paths


AUDIT_FILES = {"json": "audit.json", "markdown": "audit.md", "flags": "flags.safetensors",
               "examples": "examples.safetensors", "html": "report.html"}


def write_audit_report(doc: dict[str, Any], markdown: str, flags: dict[str, torch.Tensor], out_dir: str | Path,
                       title: str = "advshield audit", command: str | None = None,
                       examples: dict[str, torch.Tensor] | None = None,
                       flags_metadata: dict[str, str] | None = None) -> dict[str, Path]:
    """Write an audit's audit.json (``doc``), audit.md, flags.safetensors (per-sample flags; ``flags_metadata``
    names its keys), examples.safetensors (optional images) and report.html into ``out_dir``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "report": {"title": title, "command": command}}
    paths = {k: out / v for k, v in AUDIT_FILES.items()}
    write_text(paths["json"], to_json_text(doc))
    write_text(paths["markdown"], markdown)
    with atomic_path(paths["flags"]) as tmp:
        save_file({k: v.contiguous() for k, v in flags.items()}, str(tmp), metadata=flags_metadata)
    if examples:
        with atomic_path(paths["examples"]) as tmp:
            save_file({k: quantize(k, v) for k, v in examples.items()}, str(tmp))
    else:
        del paths["examples"]
    write_text(paths["html"], audit_html(doc, title, command, examples))
    return paths


def rebuild(out_dir: str | Path) -> dict[str, Path]:
    """Rebuild report.html (and report.md for a grid) in ``out_dir`` from its saved files: a grid
    (report.json + flags.safetensors [+ examples.safetensors]) or an audit (audit.json [+ examples]). Nothing is
    recomputed; a directory holding neither raises a one-line AdvshieldError."""
    out = Path(out_dir)
    if not out.is_dir():
        raise AdvshieldError(f"{out}: not a directory")
    if (out / AUDIT_FILES["json"]).is_file() and not (out / "report.json").is_file():
        try:
            doc = json.loads((out / AUDIT_FILES["json"]).read_text())
            ex_path = out / AUDIT_FILES["examples"]
            examples = load_file(str(ex_path)) if ex_path.is_file() else None
        except (OSError, ValueError) as e:
            raise AdvshieldError(f"{out}: cannot read the saved audit: {e}") from None
        if not isinstance(doc, dict) or "per_attack" not in doc:
            raise AdvshieldError(f"{out}: {AUDIT_FILES['json']} is not an advshield audit")
        if examples:
            examples = {k: v.float() / 255 if v.dtype == torch.uint8 else v for k, v in examples.items()}
        r = doc.get("report") or {}
        path = out / AUDIT_FILES["html"]
        write_text(path, audit_html(doc, r.get("title", "advshield audit"), r.get("command"), examples))
        return {"html": path}
    return _views(GridResults.load(out), out)
