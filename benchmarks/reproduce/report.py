"""The study's text: the per-(w, r) table, the claims with their verdicts, the runs with
their wall times and commands; written beside the plot, and (``--publish``) into
docs/, BENCHMARKS.md and the README."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks._report import markdown_table, put_section, write_section
from mutualnet.fileio import atomic_write

from .plots import plot_study
from .settings import GROUPS, ROOT, Scale, plan_runs
from .study import (
    Comparison,
    Loaded,
    boosting,
    claim_sentence,
    compare,
    missing_note,
    seeds_of,
    stats,
)

README = ROOT / "README.md"
DOCS = ROOT / "docs"


def points_table(loaded: Loaded) -> str:
    """Top-1 per (w, r) and method: seed mean (per-seed values); '-' not trained there."""
    st = {g: stats(v) for g, v in loaded.per_group.items()}
    keys = {k: s.macs for g in st.values() for k, s in g.items()}
    rows = []
    for (w, r), macs in sorted(keys.items(), key=lambda kv: -kv[1]):
        cells = []
        for g in GROUPS:
            if not loaded.per_group.get(g):
                cells.append("missing")
            else:
                cells.append(st[g][(w, r)].text() if (w, r) in st[g] else "-")
        rows.append([f"w{w:.2f}-r{r}", f"{macs / 1e6:.3f}M", *cells])
    return markdown_table(["subnet", "MACs", *GROUPS], rows) if rows else "(no results yet)"


def _cell(side: tuple[str, object] | None) -> str:
    if side is None:
        return "missing"
    sid, st = side
    return f"{st.text()} [{sid}]"  # type: ignore[attr-defined]


def claims_table(loaded: Loaded) -> str:
    """Best top-1 within each budget per method (the one budget rule) and the verdicts."""
    mu = compare(loaded, "MutualNet", "US-Net")
    ui = compare(loaded, "US-Net", "Independent")
    rows = []
    for a, b in zip(mu, ui, strict=True):
        rows.append([f"{a.budget} ({a.macs / 1e6:.3f}M)", _cell(a.a), _cell(a.b), _cell(b.b),
                     a.verdict, b.verdict])
    head = ["budget (MACs)", *GROUPS, "MutualNet vs US-Net", "US-Net vs Independent"]
    return markdown_table(head, rows) if rows else "(no results yet)"


def claims(loaded: Loaded) -> list[str]:
    """One plain sentence per claim."""
    n = seeds_of(loaded)
    boost: list[Comparison] = [boosting(loaded)]
    return [
        claim_sentence("MutualNet beats US-Net at every MACs budget",
                       compare(loaded, "MutualNet", "US-Net"), n),
        claim_sentence("US-Net beats independently trained networks at every MACs budget",
                       compare(loaded, "US-Net", "Independent"), n),
        claim_sentence("MutualNet boosts the full-width network over plain training "
                       "(w1.00-r32 vs independent-w1.00)", boost, n),
    ]


def runs_table(loaded: Loaded) -> str:
    rows = []
    for spec in plan_runs(loaded.scale):
        doc = loaded.docs.get(spec.key)
        if doc is None:
            rows.append([spec.key, "missing", "-", "-", "-"])
            continue
        rows.append([spec.key, f"{doc['wall_s'] / 60:.1f} (train {doc['train_wall_s'] / 60:.1f})",
                     f"{doc['epochs']} / {doc['steps']}", str(len(doc.get("sessions", []))),
                     f"`{doc['command']}`"])
    return markdown_table(["run", "wall min", "epochs / steps", "sessions", "command"], rows)


def describe(scale: Scale) -> str:
    data = "the bundled CIFAR-10 subset" if scale.bundled else "full CIFAR-10 (50,000 / 10,000)"
    if scale.train_images:
        data += f", first {scale.train_images} training images"
    return (f"Scale `{scale.name}`: {scale.model_ref.label} on {data}; {scale.epochs} "
            f"epoch{'s' * (scale.epochs > 1)}, batch {scale.batch_size}, lr {scale.lr:g} per 128 "
            "images (cosine, SGD Nesterov 0.9, wd 5e-4), pad-4 crop + flip, resolutions "
            f"32/28/24/20; seeds {', '.join(map(str, scale.seeds))}. Every subnet is BN-"
            f"calibrated on {scale.calib_images} training images, then evaluated on the test "
            "split. A verdict counts a difference only beyond the seed spread (max - min).")


def study_markdown(loaded: Loaded, png: str) -> str:
    smoke = ("\n\n**Smoke run: a few steps on tiny data; the figures say nothing about the "
             "claims.**" if loaded.scale.name == "smoke" else "")
    return "\n\n".join([
        describe(loaded.scale) + smoke, missing_note(loaded),
        "\n".join(f"- {s}" for s in claims(loaded)),
        f"![top-1 vs MACs]({png})",
        "Best top-1 (%) within each MACs budget (seed mean (per seed) [subnet]):",
        claims_table(loaded), "Top-1 (%) per (w, r) point:", points_table(loaded),
        "Runs (wall time summed over sessions; the command that finished each):",
        runs_table(loaded)])


@dataclass(frozen=True)
class Written:
    png: Path
    md: Path


def write_report(loaded: Loaded, dest: Path) -> Written:
    """``cifar_study.png`` and ``cifar_study.md`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    png, md = dest / "cifar_study.png", dest / "cifar_study.md"
    plot_study(loaded, png, title=plot_title(loaded.scale))
    text = study_markdown(loaded, png.name)
    atomic_write(md, lambda t: t.write_text(text + "\n"))
    return Written(png, md)


def plot_title(scale: Scale) -> str:
    what = "bundled subset (SMOKE: not a result)" if scale.bundled else "CIFAR-10"
    return (f"{scale.model_ref.label}, {what}, {scale.epochs} epoch(s), batch "
            f"{scale.batch_size}, seeds {', '.join(map(str, scale.seeds))}")


def publish(loaded: Loaded, command: str, benchmarks: Path | None = None,
            docs: Path = DOCS, readme: Path | None = README) -> Path:
    """The plot into docs/, the section into BENCHMARKS.md and (cpu scale) the README."""
    name = "cifar_study" if loaded.scale.name == "cpu" else f"cifar_study_{loaded.scale.name}"
    png = docs / f"{name}.png"
    plot_study(loaded, png, title=plot_title(loaded.scale))
    title = f"CIFAR-10 study ({loaded.scale.name} scale): MutualNet vs US-Net vs independent"
    write_section(name, title, study_markdown(loaded, f"docs/{png.name}"), command,
                  path=benchmarks)
    if readme is not None and loaded.scale.name == "cpu":
        body = "\n\n".join([f"### {title}", f"Command: `{command}`",
                            study_markdown(loaded, f"docs/{png.name}")])
        put_section(readme, name, f"<!-- begin: {name} -->\n{body}\n<!-- end: {name} -->")
    return png
