"""Every `python -m pipeline ...` command that a page of the docs or the README names parses with
the CLI's own parser, so no page teaches a command or flag that does not exist."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pipeline.__main__ import parser

REPO = Path(__file__).resolve().parents[1]
# docs/cli.md is the parser's own usage text (docs/gen/gen_cli_doc.py), not commands to run
PAGES = [
    REPO / "README.md",
    *sorted(set((REPO / "docs").glob("*.md")) - {REPO / "docs" / "cli.md"}),
]
COMMAND = re.compile(r"python -m pipeline((?: +[^\s`|;&#)\"'\\]+)*)")
# Placeholders the pages use for values a reader fills in
PLACEHOLDERS = {"<stage>": "train", "<run id>": "0123abcd", "<its run_id>": "0123abcd"}


def commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        text = re.sub(r"<[^>\n]+>", "VALUE", text)  # any other <...> placeholder
        for match in COMMAND.finditer(text):
            found.append((page.name, match.group(1).strip()))
    return found


def test_the_pages_name_commands() -> None:
    assert len(commands()) > 30


@pytest.mark.parametrize(("page", "arguments"), sorted(set(commands())))
def test_each_documented_command_parses(page: str, arguments: str) -> None:
    words = shlex.split(arguments)
    if not words:  # `python -m pipeline` itself, named in prose
        return
    cli = parser()
    if len(words) == 1 or words[-1].startswith("--") and not words[1:-1]:
        # the command named in prose (`python -m pipeline predict`): it exists, with that flag
        subcommands = next(
            a for a in cli._actions if isinstance(a, argparse._SubParsersAction)
        ).choices
        assert words[0] in subcommands, f"{page}: no command {words[0]!r}"
        flags = {f for a in subcommands[words[0]]._actions for f in a.option_strings}
        assert all(w in flags for w in words[1:]), f"{page}: {arguments}"
        return
    try:
        cli.parse_args(words)
    except SystemExit:
        pytest.fail(f"{page}: `python -m pipeline {arguments}` does not parse")
