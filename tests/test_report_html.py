"""The markdown tables as HTML pages (what `snakemake --report` shows)."""

from html.parser import HTMLParser

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


def test_html_written_beside_each_markdown_table(tmp_path):
    md = tmp_path / "summary.md"
    md.write_text(MD)
    (out,) = write_html_tables([md])
    assert out == tmp_path / "summary.html" and out.read_text().startswith("<!DOCTYPE html>")
