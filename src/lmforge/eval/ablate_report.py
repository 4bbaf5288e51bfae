"""What a person reads after `lmforge ablate`: the verdict lines, the console table,
ablation.json, a bar chart of held-out bits-per-byte with CIs, and one self-contained HTML
page (no network)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import jinja2
import yaml
from rich.console import Console
from rich.table import Table

from lmforge.io import atomic_write_bytes, atomic_write_json, atomic_write_text

LOSS_NOTE = ("loss/token: nats per token of each recipe's own tokenizer, not comparable "
             "across recipes; bits-per-byte is")
WIDE = 132
COLUMNS = ("recipe", "docs kept", "train tokens", "tokens seen", "held-out bpb [95% CI]",
           "Δ bpb vs {baseline} [95% CI]", "p", "loss/token")

PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmforge ablation</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.verdict { font-size: 17px; font-weight: 600; }
.note { color: #666; font-size: 13px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; }
</style></head><body>
<h1>Data recipe ablation</h1>
{% for line in verdicts %}<p class="verdict">{{ line }}</p>{% endfor %}
<p>Held-out set: {{ heldout.docs }} test documents ({{ "{:,}".format(heldout.bytes) }}
bytes) of recipe <b>{{ heldout.recipe }}</b> (another with <code>--heldout NAME</code>);
{{ heldout.removed_in_a_train_split }} removed because their text is in some recipe's
train split, {{ heldout.removed_repeats }} repeats removed.
{% if format_note %}Note: {{ format_note }}.{% endif %}
Every recipe trained the same model on {{ "{:,}".format(protocol.tokens_per_recipe) }} tokens
({{ protocol.max_steps }} steps × {{ protocol.batch_size }} × {{ protocol.block_size }}
× {{ protocol.grad_accum }}), hash split seed {{ protocol.split.seed }}.</p>
<table><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}
</table>
<p class="note">{{ note }}. CIs: {{ protocol.bootstrap_iters }} bootstrap resamples of the
held-out documents, paired for the differences.</p>
<img alt="held-out bits-per-byte per recipe" src="data:image/png;base64,{{ png }}">
<h2>Recipes</h2>
{% for r in recipes %}<h3>{{ r.name }} <span class="note">{{ r.path }}</span></h3>
<p>Cleaning steps: {{ r.steps or "none" }}</p><pre>{{ r.recipe }}</pre>
<details><summary>resolved data section</summary><pre>{{ r.data }}</pre></details>
{% endfor %}
</body></html>
""")


def verdict(name: str, base: str, ours: float, theirs: float, paired: dict[str, Any]) -> str:
    """One line: who wins on the shared held-out set, or that the CI cannot tell."""
    pct = f"{paired['confidence']:.0%}"
    diff, low, high = paired["diff"], paired["low"], paired["high"]
    if high < 0:
        return (f"{name} beats {base} on the shared held-out set: bits-per-byte {ours:.3f} vs "
                f"{theirs:.3f} ({diff:+.3f}, {pct} CI [{low:+.3f}, {high:+.3f}])")
    if low > 0:
        return (f"{base} beats {name} on the shared held-out set: bits-per-byte {theirs:.3f} "
                f"vs {ours:.3f} ({-diff:+.3f}, {pct} CI [{-high:+.3f}, {-low:+.3f}])")
    return (f"{name} and {base} are not distinguishable on the shared held-out set: "
            f"bits-per-byte {ours:.3f} vs {theirs:.3f} ({diff:+.3f}, {pct} CI "
            f"[{low:+.3f}, {high:+.3f}] includes 0)")


def format_note(held: dict[str, Any]) -> str:
    """Which recipes hold held-out documents with other text than the held-out set's."""
    counts = ", ".join(f"{name} {n:,}" for name, n in held["other_form"].items() if n)
    return (f"of the {held['docs']:,} held-out documents, other recipes hold some with other "
            f"text ({counts}): on those the held-out text is in {held['recipe']}'s form, which "
            "favours a model trained on that form; see --heldout")


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row of formatted cells per recipe, the baseline first."""
    rows = []
    for r in result["recipes"]:
        held, paired = r["heldout"], r["vs_baseline"]
        kept = sum(r["docs"].values())
        share = kept / r["input_docs"] if r["input_docs"] else 0.0
        delta, p = "baseline", ""
        if paired is not None:
            delta = f"{paired['diff']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}]"
            p = p_text(paired)
        rows.append([
            r["name"], f"{kept:,} ({share:.0%})", f"{r['train_tokens']:,}",
            f"{r['tokens_seen']:,}",
            f"{held['bits_per_byte']:.3f} [{held['bpb_low']:.3f}, {held['bpb_high']:.3f}]",
            delta, p, f"{held['loss_per_token']:.3f}",
        ])
    return rows


def p_text(paired: dict[str, Any]) -> str:
    """A bootstrap p of 0 means fewer than one resample in `iters` crossed 0."""
    if paired["p_value"] == 0:
        return f"<{1 / paired['iters']:.1g}"
    return f"{paired['p_value']:.2g}"


def columns(result: dict[str, Any]) -> list[str]:
    return [c.format(baseline=result["baseline"]) for c in COLUMNS]


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    """The table and the verdicts on stdout."""
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # a log file: no terminal width to squeeze the table into
            console.width = WIDE
    held = result["heldout"]
    table = Table(title=f"ablation: {held['docs']:,} held-out documents from "
                  f"{held['recipe']}'s test split", title_justify="left", caption=LOSS_NOTE,
                  caption_justify="left")
    for i, name in enumerate(columns(result)):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    for line in result["verdicts"]:
        console.print(line)
    if any(held["other_form"].values()):
        console.print(f"note: {format_note(held)}")


def plot_png(result: dict[str, Any]) -> bytes:
    """A bar per recipe: held-out bits-per-byte with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = result["recipes"]
    names = [r["name"] if r["vs_baseline"] is None else
             f"{r['name']}\nΔ {r['vs_baseline']['diff']:+.3f} "
             f"[{r['vs_baseline']['low']:+.3f}, {r['vs_baseline']['high']:+.3f}]"
             for r in recipes]
    values = [r["heldout"]["bits_per_byte"] for r in recipes]
    errors = [[v - r["heldout"]["bpb_low"] for v, r in zip(values, recipes, strict=True)],
              [r["heldout"]["bpb_high"] - v for v, r in zip(values, recipes, strict=True)]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 4))
    bars = ax.bar(names, values, yerr=errors, capsize=6, color="#4c78a8")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], label_type="center",
                 color="white")
    ax.set_ylabel("held-out bits per byte (lower is better)")
    ax.set_title(f"{result['heldout']['docs']:,} held-out documents, 95% CI\n"
                 f"Δ: paired difference from {result['baseline']}", fontsize=10)
    ax.set_ylim(0, max(r["heldout"]["bpb_high"] for r in recipes) * 1.15)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def render_html(result: dict[str, Any], png: bytes) -> str:
    recipes = [{"name": r["name"], "path": r["path"], "steps": ", ".join(r["data"]["steps"]),
                "recipe": yaml.safe_dump(r["recipe"], sort_keys=False) if r["recipe"] else "{}",
                "data": yaml.safe_dump(r["data"], sort_keys=False)}
               for r in result["recipes"]]
    return PAGE.render(verdicts=result["verdicts"], heldout=result["heldout"],
                       protocol=result["protocol"], columns=columns(result),
                       rows=table_rows(result), note=LOSS_NOTE,
                       format_note=format_note(result["heldout"]) if any(
                           result["heldout"]["other_form"].values()) else "",
                       png=base64.b64encode(png).decode("ascii"), recipes=recipes)


def write_report(result: dict[str, Any], out: Path) -> None:
    """OUT/ablation.json, OUT/ablation.png and OUT/ablation.html."""
    png = plot_png(result)
    atomic_write_json(out / "ablation.json", result)
    atomic_write_bytes(out / "ablation.png", png)
    atomic_write_text(out / "ablation.html", render_html(result, png))
