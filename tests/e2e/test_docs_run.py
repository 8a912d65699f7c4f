"""The docs run as written: every shell block of README.md and docs/ (the journeys first) is
run, in order, one shell per document, in a fresh temporary HOME (so a fresh embedded store)
and working directory, with the checkout's ``hwcost`` on PATH.

A block that cannot run here says so in the doc, in HTML comments right above its fence (not
rendered), each with its reason in parentheses:

    <!-- docs-run: skip (needs a Slurm cluster) -->
    <!-- docs-run: replace `OLD` -> `NEW` (why: a second machine, a GPU, speed, ...) -->
    <!-- docs-run: before `COMMAND` (what it stands in for) -->
    <!-- docs-run: parallel i=0,1 (two local worker processes stand in for two hosts) -->

``replace`` substitutes text in the block before it runs (OLD must occur in it), ``before``
runs a command first without showing it to the reader, ``parallel`` runs the block once per
value of the variable, at the same time, and waits for every copy. A ``console`` block runs its
``$ `` lines; where its documented output holds an ``Error:`` line, the command must fail with
exactly that line. Every fence names its language, so that no command hides in an untagged
block, and every shell block is run or marked (the fast tests below check that without
running anything).

The shared store of the fleet journey (``$DOCS_RUN_STORE``) is a fresh PostgreSQL database
where ``HWCOST_TEST_PG`` names a server, else an SQLite file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "console", "shell"}
DIRECTIVE = re.compile(r"<!--\s*docs-run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(.*)$")
_REASON = r"\((?P<reason>.+)\)"
KINDS = {
    "skip": re.compile(rf"^skip\s+{_REASON}$"),
    "replace": re.compile(rf"^replace\s+`(?P<old>[^`]+)`\s*->\s*`(?P<new>[^`]*)`\s+{_REASON}$"),
    "before": re.compile(rf"^before\s+`(?P<cmd>[^`]+)`\s+{_REASON}$"),
    "parallel": re.compile(rf"^parallel\s+(?P<var>[A-Za-z_]\w*)=(?P<values>[\w,.-]+)\s+{_REASON}$"),
}


def documents() -> list[Path]:
    """README.md, the journeys, then the other docs pages."""
    return ([REPO / "README.md"] + sorted((REPO / "docs" / "journeys").glob("*.md"))
            + sorted((REPO / "docs").glob("*.md")))


@dataclass
class Block:
    """One fenced code block and the docs-run directives right above it."""

    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    directives: list[tuple[str, re.Match | None, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def shell(self) -> bool:
        return self.lang in SHELL

    def of(self, kind: str) -> list[re.Match]:
        return [m for k, m, _ in self.directives if k == kind and m is not None]

    @property
    def skipped(self) -> bool:
        return bool(self.of("skip"))


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc`` with their directives, in order."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.group(1), m.group(2).strip()
        lang = info.split()[0] if info else ""
        directives = []
        j = i - 1
        while j >= 0 and DIRECTIVE.search(lines[j]):
            text = DIRECTIVE.search(lines[j]).group(1)
            kind = text.split()[0] if text.split() else ""
            directives.insert(0, (kind, KINDS[kind].match(text) if kind in KINDS else None, text))
            j -= 1
        body, k = [], i + 1
        while k < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[k]):
            body.append(lines[k][len(indent):] if lines[k].startswith(indent) else lines[k])
            k += 1
        out.append(Block(doc, i + 1, lang, "\n".join(body) + "\n", directives))
        i = k + 1
    return out


def all_blocks() -> list[Block]:
    return [b for d in documents() for b in blocks(d)]


def runnable(doc: Path) -> list[Block]:
    return [b for b in blocks(doc) if b.shell and not b.skipped]


# --- the fast checks: nothing runs ----------------------------------------------------------

def test_every_fence_names_its_language():
    untagged = [b.where for b in all_blocks() if not b.lang]
    assert not untagged, ("untagged code fences (tag commands bash or console, output and "
                          f"synopses text): {untagged}")


def test_every_shell_block_runs_or_says_why_not():
    problems = []
    for b in all_blocks():
        for kind, m, text in b.directives:
            if kind not in KINDS:
                problems.append(f"{b.where}: unknown directive {text!r}")
            elif m is None:
                problems.append(f"{b.where}: malformed {kind!r} directive (a reason in "
                                f"parentheses is required): {text!r}")
            elif not b.shell:
                problems.append(f"{b.where}: docs-run directive on a {b.lang!r} block")
        for m in b.of("replace"):
            if m["old"] not in b.body:
                problems.append(f"{b.where}: replace `{m['old']}`: not in the block")
        if b.skipped and len(b.directives) > 1:
            problems.append(f"{b.where}: a skipped block takes no other directive")
    assert not problems, "\n".join(problems)
    # the documents this test exists for do run, at least in part
    for name in ("README.md", "docs/journeys/fleet.md", "docs/journeys/laptop.md",
                 "docs/journeys/sharing.md", "docs/cli.md"):
        assert runnable(REPO / name), f"{name}: no shell block runs"


def test_console_blocks_are_split_into_commands_and_expectations():
    b = Block(REPO / "README.md", 1, "console",
              "$ hwcost x \\\n    --y\nout\n$ hwcost z\nError: bad z\n")
    assert console_commands(b.body) == [("hwcost x \\\n    --y", None),
                                        ("hwcost z", "Error: bad z")]


# --- running them ---------------------------------------------------------------------------

def console_commands(body: str) -> list[tuple[str, str | None]]:
    """``$ `` commands of a console block (with backslash continuations), each with the
    ``Error:`` line its documented output shows, if any."""
    out: list[list] = []
    cont = False
    for line in body.splitlines():
        if cont:
            out[-1][0] += "\n" + line
            cont = line.endswith("\\")
        elif line.startswith("$ "):
            out.append([line[2:], None])
            cont = line.endswith("\\")
        elif out and line.startswith("Error:") and out[-1][1] is None:
            out[-1][1] = line
    return [(c, e) for c, e in out]


def script_of(b: Block) -> str:
    """The bash text that runs block ``b``: its ``before`` commands, then its body with the
    replacements, once per ``parallel`` value."""
    body = b.body
    for m in b.of("replace"):
        body = body.replace(m["old"], m["new"])
    if b.lang == "console":
        parts = []
        for cmd, error in console_commands(body):
            if error is None:
                parts.append(cmd)
                continue
            parts.append(
                f"if __out=$({cmd} 2>&1); then printf '%s\\n' \"$__out\"; "
                f"echo 'docs-run: expected this to fail' >&2; exit 1; fi\n"
                f"printf '%s\\n' \"$__out\"\n"
                f"grep -qxF -- {shlex.quote(error)} <<<\"$__out\" || "
                f"{{ echo {shlex.quote('docs-run: the output lacks the documented ' + error)} >&2; "
                "exit 1; }")
        body = "\n".join(parts) + "\n"
    for m in b.of("parallel"):
        values = " ".join(shlex.quote(v) for v in m["values"].split(","))
        body = (f"__pids=()\nfor {m['var']} in {values}; do\n(\n{body}) &\n__pids+=($!)\n"
                "done\nfor __p in \"${__pids[@]}\"; do wait \"$__p\"; done\n")
    before = "".join(m["cmd"] + "\n" for m in b.of("before"))
    return f"echo '### docs-run: {b.where}' >&2\n{before}{body}"


def _shims(bin_dir: Path) -> None:
    """``hwcost`` (the checkout's entry point, as pyproject names it) and ``python`` on PATH,
    both this interpreter."""
    bin_dir.mkdir()
    entry = re.search(r'^hwcost\s*=\s*"([\w.]+):(\w+)"', (REPO / "pyproject.toml").read_text(),
                      re.M)  # [project.scripts]
    module, func = entry.groups()
    (bin_dir / "hwcost").write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        f"'import sys; from {module} import {func}; sys.argv[0] = \"hwcost\"; sys.exit({func}())' "
        '"$@"\n')
    (bin_dir / "hwcost").chmod(0o755)
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)


@pytest.fixture
def shared_store(tmp_path):
    """The fleet's shared store: PostgreSQL where a server is configured, else SQLite."""
    if os.environ.get("HWCOST_TEST_PG"):
        from tests.conftest import make_pg_database

        url, drop = make_pg_database()
        yield url
        drop()
    else:
        yield f"sqlite:///{tmp_path / 'shared.db'}"


RUN_DOCS = [d for d in documents() if runnable(d)]


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUN_DOCS, ids=[str(d.relative_to(REPO)) for d in RUN_DOCS])
def test_the_doc_runs_as_written(doc, tmp_path, shared_store):
    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    home.mkdir()
    work.mkdir()
    _shims(bin_dir)
    (work / "data").symlink_to(REPO / "data")  # a checkout's data/, as the docs assume
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HWCOST_DB", "HWCOST_DATA", "XDG_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               DOCS_RUN_STORE=shared_store)
    script = "set -eo pipefail\n" + "".join(script_of(b) for b in runnable(doc))
    (tmp_path / "doc.sh").write_text(script)
    proc = subprocess.run(["bash", str(tmp_path / "doc.sh")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"{doc.relative_to(REPO)} fails as written (exit {proc.returncode}) in the block "
        f"after the last '### docs-run' line:\n{proc.stderr[-4000:]}\n--- stdout:\n"
        f"{proc.stdout[-2000:]}")
    assert "Traceback" not in out, out[-4000:]
