"""The results of one evaluation grid (:class:`GridResults`): per-sample predictions, the metric rows and worst
cases derived from them, example images, and their files (``report.json``, ``flags.safetensors``,
``examples.safetensors``) — written by :func:`save_results`, read back by :meth:`GridResults.load` so a report can
be rebuilt without recomputing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdvshieldError
from ..utils import atomic_path, to_json_text, write_text
from .metrics import accuracy, attack_success_rate, fooling_rate, restoration_accuracy

FILES = {"json": "report.json", "flags": "flags.safetensors", "examples": "examples.safetensors"}


@dataclass
class GridResults:
    """Per-sample predictions of one grid run plus the derived metric rows."""

    labels: torch.Tensor
    base_pred: dict[str, torch.Tensor]  # target -> predictions on clean images, no defense
    clean_pred: dict[tuple[str, str], torch.Tensor]  # (defense, target) -> clean predictions
    adv_pred: dict[tuple[str, str, str, str], torch.Tensor]  # (attack, source, defense, target) -> predictions
    attack_info: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    # a few seeded samples as images for the report (see Engine's ``examples``): "index" (k global indices),
    # "clean" (k×C×H×W), "adv/ATTACK/SOURCE", "out/DEFENSE/ATTACK/SOURCE" (defense output on the adversarial),
    # "out/DEFENSE/clean", "universal/NAME" (C×H×W perturbation); images float in [0,1]
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict of metrics per (attack, source, defense, target)."""
        y = self.labels
        out = []
        for (a, s, d, t), adv in self.adv_pred.items():
            clean = self.clean_pred[(d, t)]
            base_acc = accuracy(self.base_pred[t], y)
            clean_acc, rob_acc = accuracy(clean, y), accuracy(adv, y)
            if s.startswith("adaptive-") or s == "universal":
                setting = s
            else:
                setting = "transfer" if s != t else ("white-box" if d == "none" else "defense-unaware")
            out.append({
                "attack": a, "source": s, "defense": d, "target": t, "setting": setting,
                "n": len(y), "clean_accuracy": clean_acc, "robust_accuracy": rob_acc,
                "attack_success_rate": attack_success_rate(clean == y, adv == y),
                "fooling_rate": fooling_rate(clean, adv),
                "restoration_accuracy": restoration_accuracy(clean_acc, rob_acc, base_acc),
                "undefended_clean_accuracy": base_acc,
            })
        return out

    def worst_case(self) -> list[dict[str, Any]]:
        """Per (defense, target): the share of samples correct when clean and surviving every attack from every
        source, under two threat models side by side:

        - ``transfer_worst_case_accuracy``: the attacker ignores the defense (transfer, defense-unaware, universal);
        - ``adaptive_worst_case_accuracy``: the attacker may also attack the defended model itself (the
          ``adaptive-*`` cells; for defense ``none``, the white-box cells) — None when no such attack was run.

        ``worst_case_accuracy`` is the headline: the adaptive number when measured, else the transfer one, and
        ``threat_model`` says which."""
        y = self.labels
        out = []
        for (d, t), clean in self.clean_pred.items():
            ok_clean = clean == y
            transfer, everything = ok_clean.clone(), ok_clean.clone()
            names, adaptive_names = [], []
            for (a, s, d2, t2), adv in self.adv_pred.items():
                if (d2, t2) != (d, t):
                    continue
                hit = adv == y
                everything &= hit
                names.append(f"{a}@{s}")
                if s.startswith("adaptive-") or (d == "none" and s == t):
                    adaptive_names.append(f"{a}@{s}")
                else:
                    transfer &= hit
            frac = lambda m: float(m.float().mean()) if len(y) else float("nan")  # noqa: E731
            adaptive = frac(everything) if adaptive_names else None
            if adaptive_names:
                modes = sorted({n.split("@", 1)[1] for n in adaptive_names})
                threat = "white-box" if d == "none" else "adaptive (" + ", ".join(
                    m[len("adaptive-"):] for m in modes if m.startswith("adaptive-")) + ")"
            else:
                threat = "transfer only (defense-unaware; no adaptive attack run)"
            out.append({"defense": d, "target": t, "clean_accuracy": accuracy(clean, y),
                        "transfer_worst_case_accuracy": frac(transfer),
                        "adaptive_worst_case_accuracy": adaptive,
                        "worst_case_accuracy": adaptive if adaptive is not None else frac(transfer),
                        "threat_model": threat, "attacks": names})
        return out

    def __repr__(self) -> str:
        """``GridResults(200 images; 2 attacks (fgsm, pgd), 1 source (vgg), 2 defenses (none, jpeg), 1 target;
        clean accuracy vgg 0.910)``: counts, up to 4 names each, undefended clean accuracy per target."""

        def few(kind: str, names: list[str]) -> str:
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            return f"{len(names)} {kind}{'' if len(names) == 1 else 's'}" + (f" ({shown})" if names else "")

        targets = list(self.base_pred)
        acc = ", ".join(f"{t} {accuracy(self.clean_pred.get(('none', t), self.base_pred[t]), self.labels):.3f}"
                        for t in targets)
        parts = [few("attack", list(dict.fromkeys(k[0] for k in self.adv_pred))),
                 few("source", list(dict.fromkeys(k[1] for k in self.adv_pred))),
                 few("defense", list(dict.fromkeys(k[0] for k in self.clean_pred))), few("target", targets)]
        return f"GridResults({len(self.labels)} images; {', '.join(parts)}; clean accuracy {acc or '-'})"

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "attacks": self.attack_info, "rows": self.rows(), "worst_case": self.worst_case()}

    def flags(self) -> dict[str, torch.Tensor]:
        """Per-sample predictions, keyed for safetensors (labels, base/TARGET, clean/DEFENSE/TARGET,
        adv/ATTACK/SOURCE/DEFENSE/TARGET)."""
        f = {"labels": self.labels}
        f.update({f"base/{t}": p for t, p in self.base_pred.items()})
        f.update({f"clean/{d}/{t}": p for (d, t), p in self.clean_pred.items()})
        f.update({f"adv/{a}/{s}/{d}/{t}": p for (a, s, d, t), p in self.adv_pred.items()})
        return f

    @classmethod
    def load(cls, out_dir: str | Path) -> "GridResults":
        """The results saved in ``out_dir`` by :func:`save_results` (``report.json`` + ``flags.safetensors``, and
        ``examples.safetensors`` when present); a missing or foreign file raises a one-line AdvshieldError."""
        out = Path(out_dir)
        paths = {k: out / v for k, v in FILES.items()}
        for k in ("json", "flags"):
            if not paths[k].is_file():
                raise AdvshieldError(f"{out}: no {FILES[k]} here (write one with `advshield eval` or `demo`)")
        try:
            doc = json.loads(paths["json"].read_text())
            flags = load_file(str(paths["flags"]))
            examples = load_file(str(paths["examples"])) if paths["examples"].is_file() else {}
        except (OSError, ValueError) as e:
            raise AdvshieldError(f"{out}: cannot read the saved results: {e}") from None
        if not isinstance(doc, dict) or "meta" not in doc or "labels" not in flags:
            raise AdvshieldError(f"{out}: {FILES['json']} / {FILES['flags']} are not advshield grid results")
        base, clean, adv = {}, {}, {}
        for k, v in flags.items():
            parts = k.split("/")
            if parts[0] == "base" and len(parts) == 2:
                base[parts[1]] = v
            elif parts[0] == "clean" and len(parts) == 3:
                clean[(parts[1], parts[2])] = v
            elif parts[0] == "adv" and len(parts) == 5:
                adv[tuple(parts[1:])] = v
        for (d, t), v in clean.items():  # files from before base/ was saved: the undefended clean predictions
            if d == "none":
                base.setdefault(t, v)
        # safetensors sorts its keys: restore the run order from report.json's rows and worst cases
        pairs = [(w.get("defense"), w.get("target")) for w in doc.get("worst_case", []) if isinstance(w, dict)]
        cells = [(r.get("attack"), r.get("source"), r.get("defense"), r.get("target")) for r in doc.get("rows", [])
                 if isinstance(r, dict)]
        clean = _reordered(clean, pairs)
        adv = _reordered(adv, cells)
        base = _reordered(base, list(dict.fromkeys(t for _, t in pairs)))
        return cls(flags["labels"], base, clean, adv, doc.get("attacks", {}), doc["meta"],  # type: ignore[arg-type]
                   {k: v if k == "index" else v.float() / 255 if v.dtype == torch.uint8 else v.float()
                    for k, v in examples.items()})


def _reordered(d: dict, order: list) -> dict:
    """``d`` with the keys listed in ``order`` first, in that order, then the rest as they were."""
    return {**{k: d[k] for k in order if k in d}, **{k: v for k, v in d.items() if k not in order}}


def save_results(res: GridResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json`` (metrics, strict JSON), ``flags.safetensors`` (per-sample predictions) and, when the
    results hold examples, ``examples.safetensors`` (images as uint8, 1/255 steps) into ``out_dir``, each atomically.
    Returns kind → path ("json", "flags", "examples")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    write_text(paths["json"], to_json_text(res.to_json()))
    with atomic_path(paths["flags"]) as tmp:
        save_file({k: v.contiguous() for k, v in res.flags().items()}, str(tmp))
    if res.examples:
        q = {k: quantize(k, v) for k, v in res.examples.items()}
        with atomic_path(paths["examples"]) as tmp:
            save_file(q, str(tmp))
    else:
        del paths["examples"]
    return paths


def quantize(key: str, v: torch.Tensor) -> torch.Tensor:
    """An example tensor as stored: integer tensors (indices, labels, predictions) as they are; perturbations
    ("universal/…", signed) as float16; images in [0,1] as uint8 (1/255 steps)."""
    if not v.dtype.is_floating_point:
        return v.contiguous()
    if key.startswith("universal/"):
        return v.to(torch.float16).contiguous()
    return (v.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
