"""The markdown tables as HTML pages (what `snakemake --report` shows)."""

from html.parser import HTMLParser
from pathlib import Path

from segbench.report.html import markdown_to_html, write_html_tables

MD = """# Paper tables — study `pac_bal`

Paper: **Yu**. A <b>not-a-tag</b> & more
on two lines.

- **Paper:** VOC 2012 val
- **Ours:** `synthetic`, 128x256

| Method (paper)   | Ours          |   mIoU ours (%) |
|:-----------------|:--------------|----------------:|
| DeepLabV3        | deeplabv3 / ce |           12.14 |
| ResNet + PAC     | —             |               — |
"""


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.cells, self.text, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("td", "th"):
            self._cell = [tag, dict(attrs).get("class"), ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell:
            self.cells.append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell:
            self._cell[2] += data


def test_markdown_subset_becomes_html():
    page = markdown_to_html(MD, title="t")
    p = _Collect()
    p.feed(page)
    assert p.tags.count("h1") == 1 and p.tags.count("li") == 2 and p.tags.count("table") == 1
    assert p.tags.count("tr") == 3 and p.tags.count("th") == 3 and p.tags.count("td") == 6
    # the third column is right-aligned (---:), the others not
    assert [c[1] for c in p.cells[:3]] == [None, None, "r"]
    assert p.cells[3] == ("td", None, "DeepLabV3") and p.cells[5] == ("td", "r", "12.14")
    # markup in the text is escaped, never interpreted; inline code and bold are
    assert "<b>" not in page and "&lt;b&gt;not-a-tag&lt;/b&gt; &amp; more on two lines." in page
    assert "<code>pac_bal</code>" in page and "<strong>Yu</strong>" in page
    # the table sits in its own scrolling box
    assert p.tags[p.tags.index("table") - 1] == "div" and '<div class="table-scroll">' in page
    assert ".table-scroll { overflow-x: auto;" in page


def test_html_written_beside_each_markdown_table(tmp_path):
    md = tmp_path / "summary.md"
    md.write_text(MD)
    (out,) = write_html_tables([md])
    assert out == tmp_path / "summary.html" and out.read_text().startswith("<!DOCTYPE html>")


def _wide_markdown(columns: int = 30) -> str:
    head = "| " + " | ".join(f"column {i}" for i in range(columns)) + " |"
    align = "|" + "|".join(":---" if i == 0 else "---:" for i in range(columns)) + "|"
    row = "| " + " | ".join(f"{i}.{i:02d}" for i in range(columns)) + " |"
    return f"# A wide table\n\nA paragraph above it.\n\n{head}\n{align}\n{row}\n"


def test_wide_table_scrolls_in_its_own_box(tmp_path):
    """In a browser narrower than the table, the table scrolls sideways inside its box (its
    last column reachable) while the page itself stays as wide as the window; before, the
    table ran off the page, whose scroll bar the report's viewer can hide."""
    import os

    from browser_support import CHROMIUM_ARGS, browser_path

    executable = browser_path()
    from playwright.sync_api import sync_playwright

    page_path = tmp_path / "wide.html"
    page_path.write_text(markdown_to_html(_wide_markdown(), title="wide"))
    shots = Path(os.environ.get("SEGBENCH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 600, "height": 400})
            page.goto(page_path.as_uri())
            box = page.locator("table").locator("xpath=..")
            sizes = box.evaluate("b => ({scroll: b.scrollWidth, client: b.clientWidth, "
                                 "overflow: getComputedStyle(b).overflowX})")
            assert sizes["overflow"] == "auto" and sizes["scroll"] > 2 * sizes["client"], sizes
            page_width = page.evaluate("document.documentElement.scrollWidth")
            assert page_width <= 600, f"the page itself is {page_width} px wide in a 600 px window"
            last = page.locator("th").last
            assert last.bounding_box()["x"] > 600  # out of sight at first ...
            box.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
            bb = last.bounding_box()
            assert 0 <= bb["x"] and bb["x"] + bb["width"] <= 600  # ... and in sight once scrolled
            page.screenshot(path=str(shots / "wide_table_scrolled.png"))
        finally:
            browser.close()


def test_report_job_reads_its_study_and_runs_from_files(tmp_path):
    """The report job gets the study's spec and runs as two JSON files, not as params (the
    Snakemake report shows a file's job params, and JSON there was a wall of escaped quotes);
    the job writing them reruns when the config changes them, so the report does too."""
    import json

    import yaml
    from pipeline_support import snakemake

    config = {
        "datasets": {"syn": {"source": "synthetic", "generate": {"seed": 0, "train": 4, "val": 2, "height": 64,
                                                                 "width": 128}}},
        "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
        "losses": {"ce": {"type": "ce"}},
        "train": {"epochs": 1, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
        "mlflow": {"enabled": False},
        "studies": {"s": {"datasets": ["syn"], "models": ["unet"], "losses": ["ce"], "description": "first"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, "-n", "-p").stdout
    cmd = next(l for l in out.splitlines() if "segbench report s " in l)
    assert ("--study-spec @results/studies/s/report_inputs/study.json "
            "--runs @results/studies/s/report_inputs/runs.json") in cmd
    assert "{" not in cmd and '"' not in cmd, cmd

    inputs = "results/studies/s/report_inputs"  # targets relative to the working directory
    snakemake(tmp_path, f"{inputs}/study.json", f"{inputs}/runs.json")
    spec, runs = (json.loads((tmp_path / inputs / f).read_text()) for f in ("study.json", "runs.json"))
    assert spec["name"] == "s" and spec["description"] == "first"
    assert [r["run_key"] for r in runs] == ["syn/unet/ce/s0"]
    assert runs[0]["model_spec"] == {"arch": "unet", "params": {"width": 4}}
    assert "Nothing to be done" in snakemake(tmp_path, "-n", f"{inputs}/study.json").stdout
    config["studies"]["s"]["description"] = "second"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    again = snakemake(tmp_path, "-n", f"{inputs}/study.json").stdout
    assert "rule report_inputs:" in again and "Params have changed" in again, again[-2000:]
