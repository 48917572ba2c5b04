"""`rnnlm inspect`'s page in a real headless browser (Debian's `chromium`): it loads with no script error, the
text and the charts are drawn, a URL hash chooses the unit that colours the text, and a long text is turned
into coloured spans only where it is seen."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import TINY_TEXT
from helpers import invoke
from test_inspect import checkpoint  # noqa: F401  (the tiny two-layer LSTM, a fixture)


class Page(HTMLParser):
    """What the test reads of a dumped DOM: the token spans' colours, the charts' shapes, the error box."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.spans: list[str] = []  # each token span's style
        self.polylines: list[str] = []  # points of each curve
        self.rects: list[dict[str, str]] = []
        self.selection = ""
        self.errors: str | None = None
        self.text = ""  # everything inside #text
        self._in_text = self._in_errors = 0
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id") == "text":
            self._in_text, self.selection = 1, a.get("data-selection", "")
        elif self._in_text:
            self._in_text += 1
            if tag == "span":
                self.spans.append(a.get("style", ""))
        if a.get("id") == "errors":
            self._in_errors, self.errors = 1, ""
        if tag == "polyline":
            self.polylines.append(a.get("points", ""))
        if tag == "rect":
            self.rects.append(a)

    def handle_endtag(self, tag: str) -> None:
        if self._in_text:
            self._in_text -= 1
        self._in_errors = 0

    def handle_data(self, data: str) -> None:
        if self._in_text:
            self.text += data
        if self._in_errors and self.errors is not None:
            self.errors += data


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("the browser test needs Debian's headless Chromium: apt-get install -y chromium")
    return found


def load(page: Path, hash_: str, profile: Path) -> tuple[Page, str]:
    """The DOM after the page's script ran, and the browser's log (console messages included)."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--dump-dom",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1000",
            "--virtual-time-budget=5000",
            page.as_uri() + hash_,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return Page(done.stdout), done.stderr


def console_errors(log: str) -> list[str]:
    """Console messages of level error and uncaught exceptions in Chromium's log."""
    return [line for line in log.splitlines() if "CONSOLE" in line and re.search(r"Uncaught|ERROR:CONSOLE", line)]


@pytest.fixture(scope="module")
def page(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("page")
    (folder / "speech.txt").write_text(TINY_TEXT[:600], encoding="utf-8")
    result = invoke(
        "inspect", checkpoint, "--text", folder / "speech.txt", "--out", folder / "page.html", "--max-lag", 40
    )
    assert result.exit_code == 0, result.output
    return folder / "page.html"


def coordinates(points: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in points.split())]


def test_the_page_loads_with_no_error_and_draws_the_text_and_charts(page: Path, tmp_path: Path) -> None:
    dom, log = load(page, "", tmp_path / "profile")
    assert console_errors(log) == [] and dom.errors == ""
    assert len(dom.spans) == 600  # one span per character token, all in view
    assert dom.text.replace("\u21b5", "") == TINY_TEXT[:600]
    assert sum("background-color: rgba(" in style for style in dom.spans) == 600  # every token coloured
    curves = [coordinates(points) for points in dom.polylines]
    assert [len(curve) for curve in curves] == [40, 40]  # through h and through c, lags 1..40
    for curve in curves:
        xs = [x for x, _ in curve]
        assert xs == sorted(xs) and xs[-1] - xs[0] > 300  # across the plot, lag by lag
        assert all(0 < y < 260 for _, y in curve) and curve[0][1] < curve[-1][1]  # inside it, falling
    bars = [float(r["width"]) for r in dom.rects if r.get("class") == "mid"]
    shares = [float(r["width"]) for r in dom.rects if r.get("class") in ("low", "high")]
    assert bars == [320.0] * 6 and len(shares) == 6 * 2 and all(0 <= w <= 320 for w in shares)  # 2 layers, i f o


def test_the_hash_chooses_the_unit_that_colours_the_text(page: Path, tmp_path: Path) -> None:
    first, log_first = load(page, "#layer=0&q=c&unit=3", tmp_path / "a")
    second, log_second = load(page, "#layer=1&q=f&unit=5", tmp_path / "b")
    assert console_errors(log_first + log_second) == [] and first.errors == second.errors == ""
    assert (first.selection, second.selection) == ("0:c:3", "1:f:5")
    assert len(first.spans) == len(second.spans) == 600 and first.spans != second.spans
    again, _ = load(page, "#layer=0&q=c&unit=3", tmp_path / "c")
    assert again.spans == first.spans  # the colouring is the unit's, not the load's


def test_a_unit_the_page_lacks_is_named_not_shown(page: Path, tmp_path: Path) -> None:
    dom, log = load(page, "#layer=7&q=c&unit=3", tmp_path / "profile")
    assert console_errors(log) == [] and dom.errors == ""
    assert dom.selection != "7:c:3" and len(dom.spans) == 600  # the default unit stays


def test_a_script_error_is_caught(page: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text(encoding="utf-8").replace('"use strict";', '"use strict"; undefinedThing();'))
    dom, log = load(broken, "", tmp_path / "profile")
    assert "undefinedThing" in (dom.errors or "") and dom.spans == []
    assert any("undefinedThing" in line for line in console_errors(log))  # the log check sees it too


def test_a_long_text_becomes_spans_only_where_it_is_seen(checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    text = tmp_path / "long.txt"
    text.write_text(TINY_TEXT * 3, encoding="utf-8")  # about 6,800 characters: several chunks
    invoke("inspect", checkpoint, "--text", text, "--out", tmp_path / "long.html", "--max-lag", 10)
    dom, log = load(tmp_path / "long.html", "", tmp_path / "profile")
    assert console_errors(log) == [] and dom.errors == ""
    assert 1000 < len(dom.spans) < len(TINY_TEXT * 3)  # the chunks in view (and near it), not the rest
    assert dom.text.replace("\u21b5", "") == TINY_TEXT * 3  # yet the whole text is on the page


def test_the_picker_goes_through_the_hash(page: Path, tmp_path: Path) -> None:
    picked = tmp_path / "picked.html"
    choose = (  # what a reader does: pick the layer-1 forget gate of unit 5 in the controls
        "<script>setTimeout(function () { var c = document.getElementById('layer'); c.value = '1';"
        " c.dispatchEvent(new Event('change')); var q = document.getElementById('quantity'); q.value = 'f';"
        " q.dispatchEvent(new Event('change')); var u = document.getElementById('unit'); u.value = '5';"
        " u.dispatchEvent(new Event('change')); }, 50);</script></body>"
    )
    picked.write_text(page.read_text(encoding="utf-8").replace("</body>", choose), encoding="utf-8")
    dom, log = load(picked, "", tmp_path / "a")
    by_hash, _ = load(page, "#layer=1&q=f&unit=5", tmp_path / "b")
    assert console_errors(log) == [] and dom.errors == ""
    assert dom.selection == "1:f:5" and dom.spans == by_hash.spans  # the same colouring as the link's
