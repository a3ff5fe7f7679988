"""`report --from DIR`: one self-contained HTML file about a run, for a browser.

It holds the train and held-out loss curves, the health charts (gradient norm, update/weight per tensor,
dead ReLUs per layer), the attention maps of a prompt, samples, the settings and the machine. The charts
are inline SVG drawn here, with no JavaScript and nothing fetched from a network, and the page is
well-formed XML (XHTML), so any XML parser can check it.
"""
import json
import os
import platform
import random

from microgpt.ablations import describe
from microgpt.charts import esc, xhtml_page
from microgpt.errors import UserError
from microgpt.loading import open_model
from microgpt.logs import Log, health_charts, loss_chart
from microgpt.sampling import generate, stream_start
from microgpt.trace import attention_maps, label


def attention_svg(weights, labels, title):
    """One head's (T, T) attention weights as a grid: darker is more weight; rows query, columns key."""
    cell, margin = 22, 40
    size = margin + cell * len(labels)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 4}" height="{size + 20}" role="img">',
             f'<title>{esc(title)}</title>', f'<text x="2" y="12" font-size="12">{esc(title)}</text>']
    for j, lab in enumerate(labels):
        parts.append(f'<text x="{margin + cell * j + 4}" y="{margin - 4 + 14}" font-size="10">{esc(lab[:3])}</text>')
    for i, (lab, row) in enumerate(zip(labels, weights)):
        y = margin + 18 + cell * i
        parts.append(f'<text x="2" y="{y + 14}" font-size="10">{esc(lab[:5])}</text>')
        for j, w in enumerate(row):
            shade = round(255 * (1 - w))
            parts.append(f'<rect x="{margin + cell * j}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                         f'fill="rgb({shade},{shade},{255})"><title>{w:.3f}</title></rect>')
    return "".join(parts) + "</svg>"


def build(run_dir, engine_name=None, prompt=None, num_samples=10):
    """The report's HTML, as a string."""
    log = Log(run_dir)
    engine, tok, meta, path = open_model(run_dir, engine_name)
    documents, ablated = meta["data_format"] == "lines", meta["settings"]["ablate"]
    sections = [f"<h1>microgpt run: {esc(run_dir)}</h1>",
                f"<p>Checkpoint {esc(path)} at step {meta['step']}; best held-out loss "
                f"{meta['best_held_out']:.4f}{f'; the model {describe(ablated)}' if ablated else ''}.</p>",
                "<h2>Loss</h2>", loss_chart({"": log})]
    if log.health:
        sections += ["<h2>Training health</h2>", *health_charts({"": log})]
        warnings = [w for h in log.health for w in h.warnings]
        sections.append("<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>" if warnings
                        else "<p>No health warnings.</p>")
    text = prompt
    if text is None:  # a default the data may not spell: keep the characters it knows
        text = "".join(ch for ch in ("emma" if documents else "ROMEO:") if not tok.unknown(ch))
    ids = (([tok.bos] if documents else []) + tok.encode(text))[:engine.cfg.block_size] or stream_start(tok)
    labels = [label(tok, i) for i in ids]
    sections.append(f"<h2>Attention of {esc(labels)}</h2><div>")
    try:
        for li, h, weights in attention_maps(engine, ids):
            sections.append(attention_svg(weights, labels, f"layer {li}, head {h}"))
    except UserError as e:  # the scalar engine cannot trace, a model may have no attention: the page says so
        sections.append(f"<p>{esc(e)}</p>")
    sections.append("</div>")
    rng = random.Random(0)
    start, stop = ([tok.bos], tok.bos) if documents else (stream_start(tok), None)
    length = engine.cfg.block_size if documents else 200
    samples = [tok.decode(generate(engine, start, rng, length, engine.cfg.block_size, 0.8, stop=stop))
               for _ in range(num_samples)]
    sections += ["<h2>Samples (temperature 0.8)</h2>",
                 "<pre>" + esc("\n".join(samples) if documents else "\n---\n".join(samples)) + "</pre>",
                 "<h2>Settings</h2>", f"<pre>{esc(json.dumps(meta['settings'], indent=2))}</pre>",
                 "<h2>Machine</h2>",
                 f"<p>Report made on {esc(platform.platform())}, {esc(platform.python_implementation())} "
                 f"{esc(platform.python_version())}; trained on the {esc(meta['engine'])} engine.</p>"]
    return xhtml_page(f"microgpt report: {run_dir}", sections)


def report_command(args):
    out = args.out or os.path.join(args.source, "report.html")
    page = build(args.source, args.engine, args.prompt)
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}; choose another --out") from None
    print(f"wrote {out} ({len(page):,} bytes); open it in a browser")
