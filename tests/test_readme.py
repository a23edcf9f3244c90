"""The README's commands work as printed, its numbers match what the commands print, and every
relative link in README.md and docs/*.md points to a file (and heading) that exists.

The README marks each block of commands that takes seconds with ``<!-- test: quick -->`` on
the line before its ```bash fence. Each command of those blocks runs here exactly as printed,
with bash, in a scratch copy of the checkout (so that ``snakemake -n`` leaves nothing in the
real one), with this venv's ``bin/`` first on PATH as after ``source .venv/bin/activate``.
Where a command's comment states a count ("15 runs", "71 jobs", "about 150 GPU-hours"), the
count is checked against the command's own output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICK_MARK = "<!-- test: quick -->"
FENCE = re.compile(r"^```(bash|sh|console)\s*$")
# what the README promises at least: the first steps and the paper-scale plan
MIN_QUICK_BLOCKS = 2
MIN_QUICK_COMMANDS = 6


def quick_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every command in a block marked quick, continuation lines
    (ending in a backslash) joined; a ``$ `` prompt of a console block is removed."""
    lines = text.splitlines()
    commands = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != QUICK_MARK:
            i += 1
            continue
        fence = i + 1
        assert fence < len(lines) and FENCE.match(lines[fence]), (
            f"README.md line {i + 1}: {QUICK_MARK} must be followed by a ```bash, ```sh or "
            f"```console fence, found {lines[fence] if fence < len(lines) else 'the end'!r}")
        i = fence + 1
        pending, start = "", None
        while i < len(lines) and not lines[i].startswith("```"):
            line = lines[i]
            if line.startswith("$ "):
                line = line[2:]
            if line.strip():
                start = start if pending else i + 1
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                else:
                    commands.append((start, pending + line))
                    pending = ""
            i += 1
        assert i < len(lines), f"README.md: the quick block at line {fence + 1} is never closed"
    return commands


def _readme_quick() -> list[tuple[int, str]]:
    return quick_commands(README.read_text(encoding="utf-8"))


def test_readme_marks_enough_quick_blocks():
    text = README.read_text(encoding="utf-8")
    blocks = sum(1 for line in text.splitlines() if line.strip() == QUICK_MARK)
    assert blocks >= MIN_QUICK_BLOCKS, f"README.md marks {blocks} quick blocks, expected at least {MIN_QUICK_BLOCKS}"
    commands = _readme_quick()
    assert len(commands) >= MIN_QUICK_COMMANDS, commands


def test_quick_commands_parser():
    """A marked block's commands are found, continuations joined; unmarked blocks ignored."""
    text = "\n".join([
        "```bash", "make run", "```",
        QUICK_MARK, "```bash", "segbench --help   # note", "", "snakemake -n \\", "  --quiet rules", "```",
        QUICK_MARK, "```console", "$ segbench models", "```",
    ])
    assert quick_commands(text) == [
        (6, "segbench --help   # note"), (8, "snakemake -n    --quiet rules"), (13, "segbench models")]
    with pytest.raises(AssertionError, match="must be followed by"):
        quick_commands(QUICK_MARK + "\nsegbench --help\n")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of the checkout without its results, caches, venv and git data."""
    dst = tmp_path_factory.mktemp("readme") / "segbench"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", "mlruns", "*.egg-info"))
    return dst


def _stated(command: str, noun: str) -> int | None:
    """The count a command's comment states, e.g. 71 for '# the plan: 71 jobs'."""
    comment = command.split("#", 1)[1] if "#" in command else ""
    m = re.search(rf"\b(\d+) {noun}\b", comment)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("line,command", _readme_quick(), ids=[f"line{n}" for n, _ in _readme_quick()])
def test_readme_quick_command(scratch: Path, line: int, command: str):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg")
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README.md line {line}: `{command}` exited {proc.returncode}:\n{out[-3000:]}"

    jobs = _stated(command, "jobs")
    if jobs is not None:
        totals = re.findall(r"^total\s+(\d+)\s*$", out, re.M)
        assert totals, f"README.md line {line}: `{command}` printed no job total:\n{out[-2000:]}"
        assert int(totals[-1]) == jobs, f"README.md line {line} says {jobs} jobs, snakemake plans {totals[-1]}"
    runs = _stated(command, "runs")
    if runs is not None:
        found = re.findall(r"^(\d+) runs\b", out, re.M)
        assert found, f"README.md line {line}: `{command}` printed no run count:\n{out[-2000:]}"
        assert int(found[0]) == runs, f"README.md line {line} says {runs} runs, the command lists {found[0]}"
    hours = re.search(r"about (\d+) GPU-hours", command)
    if hours:
        printed = re.search(r"^GPU-hours: ([\d.]+)", out, re.M)
        assert printed, out[-2000:]
        assert abs(float(printed.group(1)) - int(hours.group(1))) <= 0.1 * int(hours.group(1)), (
            f"README.md line {line} says about {hours.group(1)} GPU-hours, the estimate is {printed.group(1)}")
    if command.split()[:2] == ["segbench", "--help"]:
        assert "check-config" in out and "serve" in out, out
    if command.split()[:2] == ["segbench", "models"]:
        for arch in ("unet", "gradnet", "deeplabv3_pac", "van_fpn_frm", "segnet_mobilenet"):
            assert re.search(rf"^{arch}\b", out, re.M), f"`segbench models` does not list {arch}:\n{out}"


def test_help_texts_have_no_rst_markup(capsys):
    """`segbench --help` and every `segbench STEP --help` are plain text: no ``literal``,
    :func:`x`, :class:`x` (docstrings of the code used as descriptions)."""
    from segbench.cli import STEPS, main

    texts = {}
    for argv in [["--help"]] + [[name, "--help"] for name in STEPS]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        texts[" ".join(argv)] = capsys.readouterr().out
    assert len(texts) > 10 and "check-config" in texts["--help"]
    rst = re.compile(r"``|:(func|class|meth|mod|attr|ref|data|exc):`")
    bad = {argv: [ln for ln in text.splitlines() if rst.search(ln)] for argv, text in texts.items()}
    assert not {k: v for k, v in bad.items() if v}, bad


# ---------------------------------------------------------------- links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _outside_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6}\s+(.*)$", _outside_code(path.read_text(encoding="utf-8")))}


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link as written, target file, anchor) of every relative link of a markdown file."""
    text = _outside_code(path.read_text(encoding="utf-8"))
    found = []
    for target in LINK.findall(text) + HTML_SRC.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):    # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        found.append((target, (path.parent / file_part).resolve() if file_part else path, anchor))
    return found


def test_relative_links_point_to_existing_files():
    docs = [README] + sorted((ROOT / "docs").glob("*.md"))
    checked, broken = 0, []
    for doc in docs:
        for target, file, anchor in relative_links(doc):
            checked += 1
            where = doc.relative_to(ROOT)
            if not file.exists():
                broken.append(f"{where}: ({target}) -> {file} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{where}: ({target}) -> no heading '#{anchor}' in {file.relative_to(ROOT)}")
    assert checked >= 20, f"only {checked} relative links found in {len(docs)} files"
    assert not broken, "\n".join(broken)


def test_link_checker_finds_broken_links(tmp_path):
    """The checker sees a missing file and a missing heading, and skips code and URLs."""
    (tmp_path / "b.md").write_text("# Real heading\n", encoding="utf-8")
    doc = tmp_path / "a.md"
    doc.write_text("[x](b.md#real-heading) [y](missing.md) [z](b.md#nope) <https://e.org> "
                   "[u](https://example.org/x.md) `[c](code.md)`\n```\n[d](fence.md)\n```\n", encoding="utf-8")
    links = relative_links(doc)
    assert [t for t, _, _ in links] == ["b.md#real-heading", "missing.md", "b.md#nope"]
    assert [f.exists() for _, f, _ in links] == [True, False, True]
    assert "real-heading" in _anchors(tmp_path / "b.md") and "nope" not in _anchors(tmp_path / "b.md")


def test_no_file_refers_to_the_private_reference_notes():
    """The project's files cite public sources (the papers, the reference implementations,
    the MLflow docs), never the notes file its authors kept outside the repository."""
    name = "reference" + ".md"        # spelt apart so that this file does not match itself
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(listed) > 100, listed
    hits = []
    for rel in listed:
        path = ROOT / rel
        if not path.is_file() or path.suffix in {".png", ".jpg", ".npz", ".npy", ".pt", ".zip", ".gz"}:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if name in line.lower():
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
