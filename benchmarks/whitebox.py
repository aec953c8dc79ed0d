"""The `whitebox` section of docs/RESULTS.md: the white-box parts of the NRP, autoencoder and FRU sections,
re-measured with :func:`advshield.audit` (APGD-CE+DLR with the full gradient and with BPDA, EOT and repeated draws
for randomized defenses, Square as the gradient-free check, transfer from the undefended model as contrast).

- NRP: ``nrp``, ``nrp-resg``, ``nrp-dynamic`` in front of fmnist-vgg, fmnist-resnet and fmnist-lenet;
- autoencoders: the noisy AE (``ae``), the same weights with the noise off, and the VAE in front of fmnist-lenet;
- FRU: the shipped FRU models audited as classifiers (their FRUs are part of the model), next to their bases, and
  the adaptive universal case: UAP, sPGD, FFF and GAP fitted *through the FRU model* (on test[5000:5000+fit]) and
  added to the audited images, against the same methods fitted on the base;
- the time of one audit at the default version (``auto``) on 1,000 images.

Every audit cell (its JSON) and every fitted perturbation is kept under ``--cache`` (committed:
benchmarks/results/whitebox), so a stopped run resumes where it was, even in a fresh checkout, and the section is
rewritten after every cell.

Run: .venv/bin/python benchmarks/whitebox.py [--n 500] [--version quick] [--eot 20] [--draws 10] [--threads 1]

On 2+ cores, ``torchrun --standalone --nproc_per_node K benchmarks/whitebox.py --threads 1 ...`` audits each cell's
blocks of 250 images on K processes (the audit's own sharding; per-sample results are the same as with one process);
rank 0 stores the cells and writes the section.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
from _results import RESULTS, audit_cached, eot_rule_note, fit_cached, machine, update_section
from torch import nn

import advshield
from advshield import distributed
from advshield.data import load_dataset
from advshield.data.tensors import to_float
from advshield.defenses.shipped_ae import AEDefense

BLOCKS = Path(__file__).resolve().parent.parent / ".cache" / "whitebox-audit"  # finished audit blocks (resume)
NRP_TARGETS = ("fmnist-vgg", "fmnist-resnet", "fmnist-lenet")
NRP_DEFENSES = ("nrp", "nrp-resg", "nrp-dynamic")
AE_DEFENSES = ("ae", "ae-vanilla", "vae")
FRU_MODELS = ("fmnist-vgg-fru", "fmnist-resnet-fru")
UNIVERSAL = ("uap", "spgd", "fff", "gap")
LABELS = {"ae": "AE noisy", "ae-vanilla": "AE vanilla (noise off)", "vae": "VAE", "nrp": "NRP", "nrp-resg":
          "NRP-ResG", "nrp-dynamic": "NRP dynamic", "none": "none"}


def defense_object(name: str, seed: int) -> str | nn.Module | None:
    """What :func:`advshield.audit` is given for ``name``: a registered name, a module, or None."""
    if name == "none":
        return None
    if name == "ae-vanilla":
        return AEDefense("zoo:ae-fmnist", latent_noise=0.0)
    return name


class Cells:
    """Runs (or reads back) audit cells with one set of settings; ``only_cached`` renders what exists."""

    def __init__(self, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor):
        self.args, self.x, self.y = args, x, y

    def get(self, defense: str, model: str, n: int | None = None, version: str | None = None,
            compute: bool = False) -> dict | None:
        """The cached cell, or (``compute``, not ``--render-only``) run it now; else None."""
        a = self.args
        n, version = n or a.n, version or a.version
        settings = {"defense": defense, "model": model, "n": n, "eps_255": a.eps, "version": version,
                    "eot_setting": a.eot, "draws_setting": a.draws, "seed": a.seed}

        def run() -> advshield.AuditResult:
            print(f"audit {defense} × {model} (n {n}, {version})", flush=True)
            return advshield.audit(advshield.load_model(f"zoo:{model}"), defense_object(defense, a.seed),
                                   self.x[:n], self.y[:n], a.eps / 255, version=version, eot=a.eot, draws=a.draws,
                                   seed=a.seed, batch_size=250, resume_dir=BLOCKS)  # a stop keeps its blocks

        return audit_cached(a.cache, f"{model}-{defense}-n{n}-{version}", settings,
                            run if compute and not a.render_only else None)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def mode(cell: dict, prefix: str) -> float | None:
    return next((v for k, v in cell["per_attack"].items() if k.startswith(prefix)), None)


def procs(cell: dict) -> str:
    """' (K processes)' for a cell computed under torchrun with K > 1 processes, else ''."""
    k = cell.get("processes", 1)
    return f" ({k} processes)" if k > 1 else ""


def audit_table(rows: list[tuple[str, str, dict | None]]) -> list[str]:
    """Markdown rows for (model, defense label, cell) triples; a missing cell says so."""
    out = ["| model | defense | clean | transfer (unaware) | full gradient | BPDA | Square | **robust** (95 % CI) | "
           "majority of draws | flags | time |", "|:---|:---|---:|---:|---:|---:|---:|---:|---:|:---|---:|"]
    for model, label, c in rows:
        if c is None:
            out.append(f"| {model} | {label} | not measured yet |  |  |  |  |  |  |  |  |")
            continue
        full = mode(c, "full") if c["defense"] != "none" else mode(c, "white-box")
        lo, hi = c["ci95"]
        extra = f", EOT {c['meta']['eot']}, {c['meta']['draws']} draws" if c["meta"].get("randomized") else ""
        out.append(f"| {model} | {label}{extra} | {pct(c['clean_accuracy'])} | {pct(mode(c, 'transfer'))} | "
                   f"{pct(full)} | {pct(mode(c, 'BPDA'))} | {pct(mode(c, 'Square'))} | "
                   f"**{pct(c['robust_accuracy'])}** ({pct(lo)}–{pct(hi)}) | {pct(c['robust_accuracy_majority'])} | "
                   f"{', '.join(c['flags']) or '–'} | {c['seconds']:.0f} s{procs(c)} |")
    return out


def universal_rows(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, fit_x: torch.Tensor,
                   out: list[str], done: Callable[[], None], compute: bool = True) -> None:
    """Fill ``out`` with Markdown rows: accuracy of each FRU model and its base on x + δ for universal δ fitted on
    the base and through the FRU model (``compute`` False: only the cached ones); ``done()`` after every row."""
    eps = args.eps / 255
    out[:] = ["| FRU model | perturbation | fitted on | base accuracy | FRU model accuracy | fit time |",
              "|:---|:---|:---|---:|---:|---:|"]
    cache = Path(args.cache) / "universal"
    for name in FRU_MODELS:
        fru = advshield.load_model(f"zoo:{name}")
        base_name = fru.card["base"]
        base = advshield.load_model(f"zoo:{base_name}")
        for method in UNIVERSAL:
            for where, net in ((base_name, base), (f"{name} (adaptive)", fru)):
                key = {"model": where.split()[0], "method": method, "eps": eps, "eps_255": round(args.eps, 2),
                       "seed": args.seed + 500, "fit_images": len(fit_x), "data": "fashion-mnist test[5000:]"}
                if method == "uap":
                    key["max_passes"] = 3
                meta = cache / ("-".join(str(key[k]) for k in ("model", "method", "eps_255", "seed", "fit_images"))
                                + ".json")
                if not compute and not meta.is_file():
                    out.append(f"| {name} | {method} | {where} | not fitted yet |  |  |")
                    continue
                delta = fit_cached(cache, key, net, fit_x)
                xa = (x + delta).clamp(0, 1)
                with torch.no_grad():
                    acc = [float((m(xa).argmax(1) == y).float().mean()) for m in (base, fru)]
                fit_s = json.loads(meta.read_text()).get("fit_time_s", float("nan"))
                out.append(f"| {name} | {method} | {where} | {pct(acc[0])} | {pct(acc[1])} | {fit_s:.0f} s |")
                done()


def render(args: argparse.Namespace, cells: Cells, universal: list[str], command: str) -> str:
    a = args
    lines = ["## White-box re-measure with `audit`: NRP, autoencoders, FRU", "",
             f"Command: `{command}`", f"Machine: {machine()}", "",
             f"`advshield.audit` on the first {a.n} Fashion-MNIST test images, L∞ eps {a.eps}/255, version "
             f"`{a.version}` (APGD {'100' if a.version == 'auto' else '20'} steps, CE then DLR on what CE left, per "
             f"mode; Square {'1000' if a.version == 'auto' else '200'} queries). Randomized defenses (detected by two "
             f"forward passes) get EOT {a.eot} per gradient step and every sample is scored over {a.draws} draws: "
             "**robust** is the worst of the draws (a sample counts only if it survives every mode in every draw), "
             "*majority of draws* the majority-vote number. *transfer* is APGD-CE on the undefended model "
             "(defense-unaware), shown as contrast; *full gradient* goes through the defense; *BPDA* backward "
             "through the identity. Accuracies in %.", "",
             "The cells were computed by advshield at commit 0957b3d, whose `audit` seeded each attack per "
             "sub-batch of the still-correct samples. `audit` now restarts all randomness per block of "
             "`batch_size` samples (so that torchrun shards give the same per-sample results): a re-run with "
             "`--cache` pointing elsewhere draws other random starts and noise, and its numbers differ from these "
             "by sampling noise only (the `audit` section was re-measured with the new seeding).", "",
             "### NRP purifiers", ""]
    lines += audit_table([(m, LABELS[d], cells.get(d, m)) for m in NRP_TARGETS for d in ("none", *NRP_DEFENSES)])
    missing = [f"{LABELS[d]} × {m}" for m in NRP_TARGETS for d in NRP_DEFENSES if cells.get(d, m) is None]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)} (EOT {a.eot} × {a.draws} draws through the purifier "
                  "take over an hour per cell on this machine; the command resumes where it stopped). The `audit` "
                  "section has every defense at 200 images with EOT 8 and 4 draws."]
    lines += ["", *nrp_reading(cells)]
    lines += ["", "### Autoencoder purifiers (fmnist-lenet)", ""]
    lines += audit_table([("fmnist-lenet", LABELS[d], cells.get(d, "fmnist-lenet")) for d in ("none", *AE_DEFENSES)])
    lines += ["", "### FRU models audited as classifiers", "",
              "The FRU model is the base with its feature-regeneration units inserted; it is audited as a "
              "classifier (white-box APGD through the FRUs), next to its base.", ""]
    fru_rows = []
    for name in FRU_MODELS:
        base = advshield.load_model(f"zoo:{name}").card["base"]
        fru_rows += [(base, "none", cells.get("none", base)), (name, "none (FRUs inside)", cells.get("none", name))]
    lines += audit_table(fru_rows)
    lines += ["", "Audited as classifiers, the FRU models are no more robust to per-image white-box attacks than their "
              "bases: the FRUs were trained against universal perturbations only, which is the threat below.", ""]
    lines += ["", f"### Universal perturbations fitted through the FRU model (adaptive universal case, L∞ "
              f"{a.eps}/255)", "",
              f"Each perturbation is fitted on {a.fit_images} test images the audit never scores (test[5000:]) — on "
              "the base (the FRU paper's setting) or through the FRU model (the attacker knows the defense) — and "
              f"added to the first {a.n} test images. Top-1 accuracy in %.", ""]
    lines += universal
    lines += ["", "Read the *FRU model accuracy* column: fitted through the FRU model, a universal perturbation is the "
              "adaptive attack on the defense; fitted on the base it is the paper's gray-box setting.", ""]
    t = cells.get(a.timing_defense, a.timing_model, n=a.timing_n, version="auto")
    lines += ["", f"### Time of one audit at the default version on {a.timing_n} images", ""]
    if t is None:
        lines.append("Not measured yet (rerun the command to resume).")
    else:
        lines += [f"`advshield.audit(zoo:{a.timing_model}, \"{a.timing_defense}\", x, y, eps={a.eps}/255)` on "
                  f"the first {a.timing_n} test images, version `auto` (APGD 100 steps CE+DLR full and BPDA, Square "
                  f"1000 queries, sanity checks): **{t['seconds']:.0f} s** ({t['seconds'] / 60:.1f} min) on "
                  f"{t.get('machine', machine())}{procs(t)}; robust accuracy {pct(t['robust_accuracy'])} %, flags: "
                  f"{', '.join(t['flags']) or 'none'}.", ""]
        lines += audit_table([(a.timing_model, LABELS.get(a.timing_defense, a.timing_defense), t)])
    every = [(f"{LABELS.get(d, d)} × {m}", cells.get(d, m)) for m in NRP_TARGETS for d in NRP_DEFENSES]
    every += [(f"{LABELS[d]} × fmnist-lenet", cells.get(d, "fmnist-lenet")) for d in AE_DEFENSES]
    lines += eot_rule_note(every)
    lines += ["", "Times: the cells were computed by up to three benchmark processes sharing the 2 cores (and the "
              "test suite at times), so every time here is an upper bound for an audit running alone. A time "
              "marked *(K processes)* is the wall time of the audit sharded over K torchrun processes of one thread "
              "each (`torchrun --standalone --nproc_per_node K benchmarks/whitebox.py --threads 1 --only "
              "nrp-dynamic`)."]
    return "\n".join(lines) + "\n"


def nrp_reading(cells: Cells) -> list[str]:
    """One sentence per NRP variant with the measured numbers: transfer (unaware) → adaptive robust."""
    out = ["**What it means.** Against an attacker who knows the purifier, NRP keeps little of its transfer-attack "
           "accuracy; its benefit is the black-box one (the `nrp` section). Measured here (robust accuracy, %):", ""]
    for d in NRP_DEFENSES:
        parts = []
        for m in NRP_TARGETS:
            c, bare = cells.get(d, m), cells.get("none", m)
            if c is None or bare is None:
                continue
            parts.append(f"{m} {pct(mode(c, 'transfer'))} defense-unaware → **{pct(c['robust_accuracy'])}** "
                         f"adaptive (undefended white-box {pct(bare['robust_accuracy'])})")
        if parts:
            out.append(f"- {LABELS[d]}: " + "; ".join(parts) + ".")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="first N test images audited (default 500)")
    p.add_argument("--eps", type=float, default=25.5, help="L∞ budget in 0-255 units (default 25.5)")
    p.add_argument("--version", default="quick", choices=["auto", "quick"])
    p.add_argument("--eot", type=int, default=20)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-images", type=int, default=500, help="test[5000:5000+k] universal attacks fit on")
    p.add_argument("--timing-n", type=int, default=1000)
    p.add_argument("--timing-defense", default="vae")
    p.add_argument("--timing-model", default="fmnist-lenet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="benchmarks/results/whitebox",
                   help="audit cells (JSON) and fitted perturbations; committed, so the section re-renders and "
                   "resumes in a fresh checkout (default benchmarks/results/whitebox)")
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update (default docs/RESULTS.md)")
    p.add_argument("--render-only", action="store_true", help="write the section from cached cells only")
    p.add_argument("--only", default=None, help="compute only these parts (comma-separated defense names, "
                   "'universal', 'timing'; e.g. nrp-dynamic in a second process), render the rest from the cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    distributed.init("cpu")
    test = load_dataset("fashion-mnist", "test")
    n_max = max(args.n, args.timing_n)
    x, y = next(test.subset(n_max).batches(n_max))
    fit_x = to_float(test.images[5000: 5000 + args.fit_images])
    cells = Cells(args, x, y)
    command = (f".venv/bin/python benchmarks/whitebox.py --n {args.n} --version {args.version} --eot {args.eot} "
               f"--draws {args.draws} --threads {args.threads}")
    universal: list[str] = ["Not fitted yet (rerun the command to resume)."]

    def write() -> None:
        if distributed.is_main():
            update_section("whitebox", render(args, cells, universal, command), args.results)

    t0 = time.time()
    universal_rows(args, x[: args.n], y[: args.n], fit_x, universal, lambda: None, compute=False)  # cached rows
    # cheapest and most used first; the section is rewritten after every cell (a stop loses nothing)
    only = set(args.only.split(",")) if args.only else None
    want = lambda part: only is None or part in only  # noqa: E731
    order = [("none", m) for m in NRP_TARGETS] + [("none", m) for m in FRU_MODELS] + \
        [(d, "fmnist-lenet") for d in AE_DEFENSES] + \
        [(d, m) for d in ("nrp", "nrp-resg") for m in NRP_TARGETS]
    order += [("timing", None)] + [("nrp-dynamic", m) for m in ("fmnist-lenet", "fmnist-vgg", "fmnist-resnet")]
    for d, m in order:
        if d == "timing":
            cells.get(args.timing_defense, args.timing_model, n=args.timing_n, version="auto", compute=want(d))
        else:
            cells.get(d, m, compute=want(d))
        write()
    if want("universal") and not args.render_only:
        universal_rows(args, x[: args.n], y[: args.n], fit_x, universal, write)
    write()
    print(f"wrote the whitebox section of {args.results} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
