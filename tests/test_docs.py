"""The code blocks of README.md and docs/*.md run as written, on the tiny backbone.

The convention (docs/development.md, "Documentation"):

- A fenced block with the info string ``bash`` or ``python`` runs.
- ``<!-- not run: REASON -->`` on the line just before the opening fence shows a block without
  running it (real weights, a cluster, a dataset not in the repository, a server that waits, ...).
  The reason is required.
- ``<!-- file: NAME -->`` on the line just before the fence: the block is a file (a run file, say);
  it is written to NAME in the working folder, for the blocks after it.
- ``text`` blocks are outputs and folder layouts; they never run.
- Any other block needs one of the two markers.

Runnable blocks run in document order (README.md, then docs/*.md by name) in one temporary working
folder that holds links to this checkout's dsseg/, jobs/, tests/, pyproject.toml and cluster.yaml:
relative paths (``tests/data/...``, ``jobs/segment.py``) work as in the checkout, and what the
examples write under ``out/`` lands in the temporary folder. So a block may read what an earlier
block wrote (``out/demo`` of the README's quick start). ``python`` and ``dsseg`` are this
interpreter's, importing this checkout. Selecting one block (``-k``) first runs the blocks before it.

Install lines are skipped, as the environment running the tests already has the project: in bash
blocks, a line (with its ``\\`` continuations) that starts with ``pip install``,
``python -m pip install``, ``python3 -m venv``, ``python -m venv``, ``. .venv/bin/activate`` or
``source .venv/bin/activate`` is replaced by ``true``. Bash blocks run under ``set -eo pipefail``.

Running the blocks takes minutes (each job starts a local Ray), so those tests carry the ``docs``
marker: ``python -m pytest -q -m docs``. The checks of the markers, the README's length and the
links run by default.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = ("dsseg", "jobs", "tests", "pyproject.toml", "cluster.yaml")  # what the working folder links to
RUNNABLE = ("bash", "python")
README_MAX_LINES = 300
BLOCK_TIMEOUT_S = 900
INSTALL_LINE = re.compile(
    r"^\s*(pip install|python3? -m pip install|python3? -m venv|\. \.venv/bin/activate|source \.venv/bin/activate)\b"
)
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
MARKER = re.compile(r"^\s*<!--\s*(not run|file):(.*?)-->\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    code: str
    marker: str | None  # "not run" or "file"
    argument: str  # the reason, or the file name

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.marker is None and self.info in RUNNABLE


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, with the marker on the line before each."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        found.append(
            Block(
                path,
                i + 1,
                info.strip().split(" ")[0] if info.strip() else "",
                "\n".join(body) + "\n",
                marker.group(1) if marker else None,
                marker.group(2).strip() if marker else "",
            )
        )
        i = end + 1
    return found


ALL_BLOCKS = [block for path in DOCUMENTS for block in blocks(path)]
# What the runnable tests execute, in order: the file blocks (written) and the runnable blocks.
SEQUENCE = [block for block in ALL_BLOCKS if block.runs or block.marker == "file"]


def test_every_block_runs_or_says_why_not():
    problems = []
    for block in ALL_BLOCKS:
        if block.marker == "not run" and not block.argument:
            problems.append(f"{block.name}: 'not run' without a reason")
        elif block.marker == "file" and (
            not block.argument or block.argument.startswith("/") or ".." in Path(block.argument).parts
        ):
            problems.append(f"{block.name}: 'file:' needs a relative file name inside the working folder")
        elif block.marker is None and block.info not in (*RUNNABLE, "text"):
            problems.append(
                f"{block.name}: a ```{block.info} block must be bash, python or text, or carry "
                "<!-- not run: REASON --> or <!-- file: NAME --> on the line before its fence"
            )
    assert not problems, "\n".join(problems)
    assert any(block.runs for block in ALL_BLOCKS)


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the reference belongs in docs/"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def test_relative_links_point_at_files():
    broken = []
    for path in DOCUMENTS:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # links, not code
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_lists_every_doc():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCUMENTS[1:] if f"(docs/{p.name})" not in readme]
    assert not missing, f"README.md's contents list lacks {missing}"


def test_docs_do_not_use_paths_outside_the_repository():
    for path in DOCUMENTS:
        assert "../shared" not in path.read_text(), f"{path.relative_to(ROOT)} refers to ../shared"


# --- running the blocks (-m docs) ---


def script(block: Block) -> str:
    """The block as run: bash install lines (with their continuations) replaced by `true`, line numbers kept."""
    if block.info != "bash":
        return block.code
    lines, out, skipping = block.code.splitlines(), [], False
    for line in lines:
        if not skipping and INSTALL_LINE.match(line):
            skipping = True
        out.append("true  # skipped: an install line" if skipping else line)
        if skipping and not line.rstrip().endswith("\\"):
            skipping = False
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name)
    return {"path": folder, "next": 0, "failed": []}


def run_block(block: Block, folder: Path) -> subprocess.CompletedProcess | None:
    if block.marker == "file":
        target = folder / block.argument
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
        return None
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python and dsseg
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)  # the examples run on an embedded local Ray
    file = folder / f"block-{block.path.stem}-{block.line}.{'sh' if block.info == 'bash' else 'py'}"
    file.write_text(script(block))
    command = ["bash", "-eo", "pipefail", file.name] if block.info == "bash" else [sys.executable, file.name]
    return subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL
    )


def failure(block: Block, run: subprocess.CompletedProcess) -> str:
    return (
        f"{block.name}: the ```{block.info} block exited with {run.returncode}\n"
        f"--- block ---\n{script(block)}"
        f"--- stdout (tail) ---\n{run.stdout[-1500:]}\n"
        f"--- stderr (tail) ---\n{run.stderr[-4000:]}"
    )


@pytest.mark.docs
@pytest.mark.parametrize("index", range(len(SEQUENCE)), ids=[b.name for b in SEQUENCE])
def test_block_runs(index, workdir):
    # The blocks before this one first (when a selection skipped them): later blocks read their outputs.
    while workdir["next"] < index:
        earlier = SEQUENCE[workdir["next"]]
        workdir["next"] += 1
        try:
            run = run_block(earlier, workdir["path"])
        except subprocess.TimeoutExpired:
            run = None
            workdir["failed"].append(earlier.name)
        if run is not None and run.returncode != 0:
            workdir["failed"].append(earlier.name)
    block = SEQUENCE[index]
    workdir["next"] = index + 1
    try:
        run = run_block(block, workdir["path"])
    except subprocess.TimeoutExpired as timeout:
        workdir["failed"].append(block.name)
        stderr = (timeout.stderr or b"")[-4000:]
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        pytest.fail(f"{block.name}: the ```{block.info} block ran past {BLOCK_TIMEOUT_S} s\n{stderr}", pytrace=False)
    if run is not None and run.returncode != 0:
        earlier = f"\n(earlier blocks failed: {', '.join(workdir['failed'])})" if workdir["failed"] else ""
        workdir["failed"].append(block.name)
        pytest.fail(failure(block, run) + earlier, pytrace=False)
