"""`report`: one self-contained, well-formed HTML file that a real browser renders into charts and maps."""
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A 2-layer names run of 200 steps and its report."""
    from conftest import run_python

    where = tmp_path_factory.mktemp("report")
    trained = run_python("-m", "microgpt", "train", "--steps", 200, "--n-layer", 2, "--log-every", 20,
                         "--eval-every", 50, "--out", "run", "--num-samples", 0, cwd=where)
    assert trained.returncode == 0, trained.stderr
    made = run_python("-m", "microgpt", "report", "--from", "run", cwd=where)
    assert made.returncode == 0 and "wrote run/report.html" in made.stdout, made.stderr
    return where / "run" / "report.html"


def test_report_is_well_formed_and_self_contained(report):
    root = ET.parse(report).getroot()  # raises on anything that is not well-formed
    text = report.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/", "")
    svgs = root.findall(f".//{SVG}svg")
    titles = [svg.find(f"{SVG}title").text for svg in svgs]
    assert titles[:4] == ["loss (nats per token)", "gradient norm (before clipping)", "update / weight, per tensor",
                          "dead ReLUs, per layer (fraction)"]
    assert [t for t in titles if t.startswith("layer ")] == [f"layer {i}, head {h}" for i in range(2) for h in range(4)]
    loss = svgs[0]
    assert len(loss.findall(f"{SVG}polyline")) == 2  # train and held-out
    assert len(svgs[4].findall(f"{SVG}rect")) == 5 * 5  # BOS e m m a: a (T, T) grid


def png_pixels(path):
    """The (width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG: the standard library's zlib
    and the five PNG row filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = {}, 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind = data[i + 4:i + 8]
        chunks.setdefault(kind, b"")
        chunks[kind] += data[i + 8:i + 8 + length]
        i += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(chunks[b"IDAT"]), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = previous[x], previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        previous = line
    return width, height, bpp, rows


@pytest.mark.skipif(not CHROMIUM, reason="no chromium (CI installs Debian's)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1600"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<svg" in dom.stdout and "loss (nats per token)" in dom.stdout  # parsed and laid out, not an error page
    width, _height, bpp, rows = png_pixels(shot)
    pixels = [tuple(row[x:x + 3]) for row in rows[::8] for x in range(0, width * bpp, 8 * bpp)]
    ink = [p for p in pixels if p != (255, 255, 255)]
    colours = set(ink)
    assert len(ink) > 0.02 * len(pixels) and len(colours) > 20, (len(ink), len(colours))  # text, lines and maps
