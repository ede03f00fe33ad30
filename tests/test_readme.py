"""The README and docs/ stay true to the code.

Every `sd-softprompt ...` command in a ```bash block of README.md or docs/*.md parses with the CLI's own
parser; the few that are cheap and offline (the tiny pipelines' demo, grid and generate on the toy world) run
for real with fewer steps and their outputs under tmp_path, and must exit 0. Every ```python block compiles.
Every relative link (and #anchor) points to a file (and heading) that exists; every script or test a page
names exists; the README stays short.
"""

from __future__ import annotations

import argparse
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260
MAX_REAL_RUNS = 3  # each takes seconds; the rest are parse-only

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
NAMED_FILE = re.compile(r"\b(?:scripts|tests)/[\w./-]*\.(?:py|sh)\b")
SHELL_SEPARATORS = {"&&", "||", ";", "|"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

# What a real run changes: fewer steps, one seed, the output under tmp_path. Flags the command lacks are added.
CHEAP = {
    "demo": {"--steps": ["2"]},
    "grid": {"--steps": ["2"], "--seeds": ["0"]},
    "generate": {"--steps": ["2"]},
}
INPUT_FLAGS = {"--soft": 1, "--interpolate": 2, "--reference-images": 1, "--images": 1, "--target-file": 1}


@dataclass(frozen=True)
class Command:
    page: str  # relative to the repository root
    line: int
    text: str  # the words as the shell splits them, re-quoted
    argv: tuple[str, ...]  # after "sd-softprompt"

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: `{self.text}`"


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """(first line number, dedented body) of each fenced block of that language."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        if match["lang"] != lang:
            continue
        indent = len(match["indent"])
        lines = match["body"].splitlines(True)
        body = "".join(line[indent:] if line[:indent].strip() == "" else line for line in lines)
        out.append((text.count("\n", 0, match.start("body")) + 1, body))
    return out


def _logical_lines(body: str, first: int) -> list[tuple[int, str]]:
    """Shell lines with backslash continuations joined, each with its first line number."""
    out, pending, start = [], "", first
    for number, line in enumerate(body.splitlines(), first):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def _shell_commands(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, text, words) of every simple command in the page's bash blocks, comments dropped."""
    out = []
    for first, body in _blocks(path, "bash"):
        for number, line in _logical_lines(body, first):
            try:
                words = shlex.split(line, comments=True)
            except ValueError as error:
                pytest.fail(f"{_rel(path)}:{number}: a shell line that does not split ({error}): `{line.strip()}`")
            command: list[str] = []
            for word in [*words, ";"]:
                if word in SHELL_SEPARATORS:
                    while command and ENV_ASSIGNMENT.match(command[0]):
                        command.pop(0)
                    if command:
                        out.append((number, shlex.join(command), command))
                    command = []
                else:
                    command.append(word)
    return out


def _cli_commands() -> list[Command]:
    return [
        Command(_rel(path), number, text, tuple(words[1:]))
        for path in PAGES
        for number, text, words in _shell_commands(path)
        if words[0] == "sd-softprompt"
    ]


def _inputs_exist(argv: tuple[str, ...]) -> bool:
    for i, word in enumerate(argv):
        for value in argv[i + 1 : i + 1 + INPUT_FLAGS.get(word, 0)]:
            if not (ROOT / value.split("=", 1)[0]).exists():
                return False
    return True


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _is_cheap(command: Command) -> bool:
    """Offline and seconds: the demo on a tiny pipeline; grid and generate on the toy world, with existing inputs."""
    argv = command.argv
    if not argv or argv[0] not in CHEAP or not _inputs_exist(argv):
        return False
    if argv[0] == "demo":
        return "--family" in argv  # without it, the toy-world demo: about a minute
    return _value(list(argv), "--model") == "toyworld"


COMMANDS = _cli_commands()
REAL = [c for c in COMMANDS if _is_cheap(c)][:MAX_REAL_RUNS]
PARSE_ONLY = [c for c in COMMANDS if c not in REAL]


def _with(argv: list[str], flag: str, values: list[str]) -> list[str]:
    """argv with `flag` set to `values` (its old values removed, wherever it was)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            continue
        out.append(argv[i])
        i += 1
    return [*out, flag, *values]


def _build_parser():
    """The CLI's own argparse parser."""
    from sd_softprompt.cli.parser import build_parser

    return build_parser()


def test_docs_have_commands_to_run():
    assert COMMANDS, "no `sd-softprompt` command found in the ```bash blocks of README.md and docs/"
    assert REAL, "no cheap offline command (demo --family, grid/generate --model toyworld) left in the docs to run"


@pytest.mark.parametrize("command", PARSE_ONLY, ids=lambda c: f"{c.page}:{c.line}")
def test_command_parses(command: Command):
    parser = _build_parser()
    try:
        args = parser.parse_args(list(command.argv))
    except SystemExit as exit_:
        pytest.fail(f"{command} does not parse (exit {exit_.code}); fix the doc or the flag")
    assert getattr(args, "command", None), f"{command} names no subcommand"
    # argparse also takes a prefix of a flag (--vector for --vectors): the docs should spell each one out
    known = _subcommand_flags(parser, command.argv[0])
    unknown = [word for word in command.argv if word.startswith("--") and word.split("=")[0] not in known]
    assert not unknown, f"{command}: {', '.join(unknown)} is not a flag of `{command.argv[0]}`, only a prefix of one"


def _subcommand_flags(parser, name: str) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices[name]._option_string_actions)
    raise AssertionError("the CLI's parser has no subcommands")


@pytest.mark.parametrize("command", REAL, ids=lambda c: f"{c.page}:{c.line}")
def test_command_runs(command: Command, tmp_path, monkeypatch, capsys):
    from sd_softprompt.cli import main

    argv = list(command.argv)
    for flag, values in CHEAP[argv[0]].items():
        argv = _with(argv, flag, values)
    out = tmp_path / ("demo" if argv[0] == "demo" else Path(_value(argv, "--out") or "out.png").name)
    argv = _with(argv, "--out", [str(out)])
    monkeypatch.chdir(ROOT)  # the docs' relative paths (samples/...) are from the repository root
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"{command} exited {code} (run as {shlex.join(argv)}):\n{(captured.out + captured.err)[-2000:]}"
    assert out.exists(), f"{command} wrote nothing at {out}"


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_python_blocks_compile(path: Path):
    for line, body in _blocks(path, "python"):
        try:
            compile(body, f"{_rel(path)}:{line}", "exec")
        except SyntaxError as error:
            pytest.fail(f"{_rel(path)}: the ```python block at line {line} does not compile: {error}")


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def _prose(path: Path) -> str:
    """The page without its fenced blocks and inline code (whose brackets are not links)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_relative_links_resolve(path: Path):
    broken = []
    for match in LINK.finditer(_prose(path)):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {_rel(linked)})")
    assert not broken, f"{_rel(path)}: broken links: {', '.join(broken)}"


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_named_scripts_and_tests_exist(path: Path):
    text = path.read_text(encoding="utf-8")
    missing = sorted({name for name in NAMED_FILE.findall(text) if not (ROOT / name).exists()})
    assert not missing, f"{_rel(path)} names files that do not exist: {', '.join(missing)}"


PUBLIC_WITH_EXAMPLES = ["load_soft_prompt", "mix", "convert", "train"]


@pytest.mark.parametrize("name", PUBLIC_WITH_EXAMPLES)
def test_public_docstrings_have_an_example_that_compiles(name):
    import sd_softprompt
    from sd_softprompt.files.convert import convert
    from sd_softprompt.train import train

    function = {"convert": convert, "train": train}.get(name) or getattr(sd_softprompt, name)
    doc = function.__doc__ or ""
    blocks = re.findall(r"```py\n(.*?)```", doc, flags=re.S)
    assert "Example:" in doc and blocks, f"{name}: no Example: ```py block in its docstring"
    for block in blocks:
        compile(textwrap.dedent(block), f"<{name} docstring>", "exec")
