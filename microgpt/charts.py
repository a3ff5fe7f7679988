"""Line charts as inline SVG, and the page that holds them, for `report` and `compare`: no JavaScript, no library,
nothing fetched from a network; the page is well-formed XML (XHTML), so any XML parser can check it.

A chart has a plot area with a few labelled ticks on each axis (round numbers: 1, 2 or 5 times a power of ten
apart; on a log scale the powers of ten themselves), light grid lines at the ticks, and the legend in a column of
its own to the right of the plot, so that it never covers a line. A quantity that spans decades (update/weight,
gradient norms) is drawn on a log scale, where only values above 0 can be placed.
"""
import html
import math
import re
from typing import NamedTuple

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]
WIDTH, HEIGHT = 760, 280  # the whole chart, legend included (taller when the legend needs it)
LEFT, RIGHT, TOP, BOTTOM = 64, 230, 48, 42  # margins around the plot: tick labels, the legend, the title, the x axis
ROW = 15  # height of one legend entry


class Series(NamedTuple):
    label: str
    points: list  # [(x, y)]; a y of None is left out
    colour: int = None  # an index into COLOURS (default: the series' position)
    dashed: bool = False


NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # control characters, lone surrogates


def esc(text):
    """Text made safe inside XHTML: markup escaped, and what XML cannot hold at all (control characters, the lone
    surrogates of a file name that is not UTF-8) shown as U+FFFD."""
    return html.escape(NOT_XML.sub("\ufffd", str(text)), quote=True)


def xhtml_page(title, sections, style=""):
    """A self-contained page: `sections` (XHTML strings) in order, under `title`."""
    return ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
            f"<title>{esc(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:2em;color:#222}svg{margin:4px}"
            f"pre{{background:#f6f6f6;padding:8px}}{style}</style></head><body>" + "\n".join(sections)
            + "</body></html>\n")


def nice_ticks(low, high, count=5, whole=False):
    """About `count` round numbers from low to high, 1, 2 or 5 times a power of ten apart (whole numbers: 1 at
    least)."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1) if whole else step
    return [k * step for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]


def log_ticks(low, high):
    """Ticks for a log scale from 10**low to 10**high (low, high: exponents): the powers of ten between or, when fewer
    than two fall inside, 1, 2 and 5 times them; within a narrower span, round numbers as on a linear scale."""
    decades = range(math.floor(low), math.ceil(high) + 1)
    for multiples in ((1,), (1, 2, 5)):
        ticks = [m * 10.0**d for d in decades for m in multiples
                 if low - 1e-9 <= math.log10(m * 10.0**d) <= high + 1e-9]
        if len(ticks) >= 2:
            return ticks
    return [tick for tick in nice_ticks(10**low, 10**high) if tick > 0]


def label(value):
    """A tick's label: whole numbers in full (steps: 1,500), others in three digits."""
    if value == int(value) and abs(value) < 1e7:
        return f"{int(value):,}"
    return f"{value:.3g}"


def line_chart(title, series, log_y=False, y_label="", x_label="step"):
    """An SVG chart of `series` (Series), a polyline (or a dot, for one point) each, with ticks and a legend."""
    def placeable(y):  # (NaN and the infinities compare False; values near the float limits would overflow the axis)
        return y is not None and abs(y) < 1e300 and (y > 1e-300 if log_y else True)
    points = [(x, y) for s in series for x, y in s.points if placeable(y)]
    if not points:
        return f"<p>{esc(title)}: nothing to draw{' (no value above 0)' if log_y else ''}.</p>"
    fy = math.log10 if log_y else (lambda y: y)
    x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
    y0, y1 = min(fy(y) for _, y in points), max(fy(y) for _, y in points)
    pad = (y1 - y0) * 0.05 or (0.5 if log_y else abs(y0) * 0.05 or 1.0)  # a flat line sits in the middle
    x1, y0, y1 = (x1 if x1 > x0 else x0 + 1), y0 - pad, y1 + pad
    height = max(HEIGHT, TOP + ROW * len(series) + 10)
    right, bottom = WIDTH - RIGHT, height - BOTTOM  # the plot area's right and bottom edges

    def px(x):
        return LEFT + (x - x0) / (x1 - x0) * (right - LEFT)

    def py(y):  # (y already on the axis' scale: log10 of it on a log scale)
        return bottom - (y - y0) / (y1 - y0) * (bottom - TOP)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img">',
             f"<title>{esc(title)}</title>",
             f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff" stroke="#cccccc"/>',
             f'<text x="6" y="18" font-size="14" font-weight="bold">{esc(title)}</text>']
    y_ticks = log_ticks(y0, y1) if log_y else nice_ticks(y0, y1)
    for tick in y_ticks:
        y = py(fy(tick))
        parts += [f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eeeeee"/>',
                  f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{label(tick)}</text>']
    for tick in nice_ticks(x0, x1, whole=True):  # (steps)
        x = px(tick)
        parts += [f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#eeeeee"/>',
                  f'<text x="{x:.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">{label(tick)}</text>']
    parts += [f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444444"/>',
              f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#444444"/>',
              f'<text x="{(LEFT + right) / 2:.0f}" y="{bottom + 32}" font-size="11" text-anchor="middle">'
              f"{esc(x_label)}</text>",
              f'<text x="6" y="{TOP - 12}" font-size="11">{esc(y_label + (" (log scale)" if log_y else ""))}</text>']
    for i, s in enumerate(series):
        colour = COLOURS[(i if s.colour is None else s.colour) % len(COLOURS)]
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        coords = [(px(x), py(fy(y))) for x, y in s.points if placeable(y)]
        if len(coords) == 1:
            parts.append(f'<circle cx="{coords[0][0]:.1f}" cy="{coords[0][1]:.1f}" r="3" fill="{colour}"/>')
        elif coords:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        y = TOP + ROW * i + 4  # the legend: a sample of the line, then its label
        parts += [f'<line x1="{right + 12}" y1="{y}" x2="{right + 32}" y2="{y}" stroke="{colour}" '
                  f'stroke-width="2"{dash}/>',
                  f'<text x="{right + 38}" y="{y + 4}" font-size="11">{esc(s.label[:30])}</text>']
    return "".join(parts) + "</svg>"
