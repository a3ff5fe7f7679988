"""`report --from DIR`: one self-contained HTML file about a run, for a browser.

It holds the train and held-out loss curves, the health charts (gradient norm, update/weight per tensor,
dead ReLUs per layer), the attention maps of a prompt, samples, the settings and the machine. The charts
are inline SVG drawn here, with no JavaScript and nothing fetched from a network, and the page is
well-formed XML (XHTML), so any XML parser can check it.
"""
import html
import json
import math
import os
import platform
import random

from microgpt.errors import UserError
from microgpt.loading import open_model
from microgpt.sampling import generate, stream_start
from microgpt.trace import attention_maps, label

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
WIDTH, HEIGHT, PAD = 640, 260, 48


def esc(text):
    return html.escape(str(text), quote=True)


def line_chart(title, series, log_y=False, y_label=""):
    """An SVG chart of {label: [(x, y), ...]}: one polyline (or dot) per series, a legend, the ranges."""
    points = [(x, y) for values in series.values() for x, y in values if y is not None and (y > 0 or not log_y)]
    if not points:
        return f"<p>{esc(title)}: nothing logged yet.</p>"
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
    y0, y1 = min(fy(y) for _, y in points), max(fy(y) for _, y in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def xy(x, y):
        return (PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD),
                HEIGHT - PAD + (fy(y) - y0) / (y1 - y0) * (2 * PAD - HEIGHT))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">',
             f'<title>{esc(title)}</title>',
             f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff" stroke="#cccccc"/>',
             f'<text x="{PAD}" y="20" font-size="14" font-weight="bold">{esc(title)}</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#444444"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#444444"/>']
    low, high = (10**y0, 10**y1) if log_y else (y0, y1)
    parts += [f'<text x="4" y="{HEIGHT - PAD}" font-size="11">{low:.3g}</text>',
              f'<text x="4" y="{PAD + 4}" font-size="11">{high:.3g}</text>',
              f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" font-size="11">step {x0:g}</text>',
              f'<text x="{WIDTH - PAD - 60}" y="{HEIGHT - PAD + 16}" font-size="11">step {x1:g}</text>',
              f'<text x="{PAD + 4}" y="{PAD - 6}" font-size="11">{esc(y_label)}</text>']
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = [xy(x, y) for x, y in values if y is not None and (y > 0 or not log_y)]
        if len(coords) == 1:
            parts.append(f'<circle cx="{coords[0][0]:.1f}" cy="{coords[0][1]:.1f}" r="3" fill="{colour}"/>')
        elif coords:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<text x="{WIDTH - PAD + 4 - 160}" y="{PAD + 14 * i}" font-size="11" '
                     f'fill="{colour}">{esc(name)}</text>')
    return "".join(parts) + "</svg>"


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


def read_log(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        raise UserError(f"no log.jsonl in {run_dir}; give a run directory that train wrote")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build(run_dir, engine_name=None, prompt=None, num_samples=10):
    """The report's HTML, as a string."""
    records = read_log(run_dir)
    engine, tok, meta, path = open_model(run_dir, engine_name)
    steps = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "held_out_loss" in r]
    health = [r for r in steps if r.get("health")]
    documents = meta["data_format"] == "lines"
    sections = [f"<h1>microgpt run: {esc(run_dir)}</h1>",
                f"<p>Checkpoint {esc(path)} at step {meta['step']}; best held-out loss "
                f"{meta['best_held_out']:.4f}.</p>", "<h2>Loss</h2>",
                line_chart("loss (nats per token)", {
                    "train (moving average)": [(r["step"], r["train_loss_smooth"]) for r in steps],
                    "held-out": [(r["step"], r["held_out_loss"]) for r in evals]})]
    if health:
        sections += ["<h2>Training health</h2>",
                     line_chart("gradient norm (before clipping)", {"all weights": [
                         (r["step"], r["health"]["grad_norm"]) for r in health]}, log_y=True),
                     line_chart("update / weight, per tensor", {name: [
                         (r["step"], r["health"]["tensors"][name]["update_ratio"]) for r in health]
                         for name in health[-1]["health"]["tensors"]}, log_y=True)]
        if health[-1]["health"]["layers"]:
            sections.append(line_chart("dead ReLUs, per layer (fraction)", {f"layer {li}": [
                (r["step"], r["health"]["layers"][li]["dead_relu"]) for r in health]
                for li in range(len(health[-1]["health"]["layers"]))}))
        warnings = [w for r in health for w in r["health"]["warnings"]]
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
    return ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
            f"<title>microgpt report: {esc(run_dir)}</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:2em;color:#222}svg{margin:4px}"
            "pre{background:#f6f6f6;padding:8px}</style></head><body>" + "\n".join(sections) + "</body></html>\n")


def report_command(args):
    out = args.out or os.path.join(args.source, "report.html")
    page = build(args.source, args.engine, args.prompt)
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}; choose another --out") from None
    print(f"wrote {out} ({len(page):,} bytes); open it in a browser")
