"""The README and docs/ tell the truth about the code: every command they show is checked.

A command a user copies from the docs must not fail on a renamed key, a removed option or
a missing file. Each shell block of README.md and docs/*.md is read command by command:

- ``python -m aml_pipeline ...`` / ``aml-pipeline ...``: the overrides are composed with
  Hydra against the typed schemas, exactly as the CLI composes them, and every ``_target_``
  passes the allow-list (a sweep's values are composed one by one);
- ``dvc exp run -S ...``: the same, for the ``-S`` overrides;
- ``python -m <module>`` / ``python <file>.py --flag``: the module or file exists and
  declares each flag;
- ``pip install '.[extra]'``: each extra exists in pyproject.toml;
- every relative link resolves to a file, and every ``#anchor`` to one of its headings.

Running the commands themselves is the job of the tests of each capability (the quickstart,
the stream, the service, the workbench...); this file keeps the text in step with them.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from aml_pipeline import CONF_DIR
from aml_pipeline.build import check_targets

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|", "&"}
#: Hydra flags that take a value, and those that do not.
VALUE_FLAGS = {"--cfg", "-c", "--info", "-i", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}
BARE_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--run", "-r"}


def shell_commands(text: str) -> list[list[str]]:
    """The commands of every shell block: continuation lines joined, comments dropped,
    ``a && b`` split in two; a quoted argument may span lines (``curl -d '{...}'``)."""
    commands: list[list[str]] = []
    for block in SHELL_BLOCK.findall(text):
        buffer = ""
        for line in block.replace("\\\n", " ").splitlines():
            buffer = f"{buffer}\n{line}" if buffer else line
            try:
                tokens = shlex.split(buffer, comments=True)
            except ValueError:  # an open quote: the argument goes on on the next line
                continue
            buffer = ""
            current: list[str] = []
            for token in tokens + [";"]:
                if token in SEPARATORS:
                    if current:
                        commands.append(current)
                    current = []
                else:
                    current.append(token)
        assert not buffer, f"unbalanced quotes in a shell block: {buffer[:80]!r}"
    return commands


def program(command: list[str]) -> list[str]:
    """The command without its leading ``NAME=value`` environment assignments."""
    i = 0
    while i < len(command) and ENV_ASSIGNMENT.match(command[i]):
        i += 1
    return command[i:]


def hydra_overrides(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUE_FLAGS:
            skip = True
        elif arg not in BARE_FLAGS:
            out.append(arg)
    return out


def one_value_each(overrides: list[str]) -> list[list[str]]:
    """A sweep's overrides as plain compositions: each swept value once, the others at their first."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([text])
    runs = [[c[0] for c in choices]]
    for i, values in enumerate(choices):
        for value in values[1:]:
            runs.append([*runs[0][:i], value, *runs[0][i + 1:]])
    return runs


def compose_checked(overrides: list[str]) -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        check_targets(cfg)
    finally:
        GlobalHydra.instance().clear()


def cli_overrides(cmd: list[str]) -> list[str] | None:
    """The Hydra overrides of an aml_pipeline command line, or None for any other command."""
    if cmd[:1] == ["aml-pipeline"]:
        return hydra_overrides(cmd[1:])
    if cmd[:1] == ["python"] and cmd[1:3] == ["-m", "aml_pipeline"]:
        return hydra_overrides(cmd[3:])
    if cmd[:3] == ["dvc", "exp", "run"]:
        return [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg in ("-S", "--set-param")]
    return None


def all_commands() -> list[tuple[str, list[str]]]:
    return [(page.name, program(c)) for page in PAGES for c in shell_commands(page.read_text())]


COMMANDS = all_commands()
CLI = [(page, cmd) for page, cmd in COMMANDS if cli_overrides(cmd) is not None]


def test_the_docs_show_commands_and_the_reader_finds_them():
    assert len(CLI) >= 40, f"only {len(CLI)} aml_pipeline commands found in the docs: is the parser broken?"
    assert shell_commands("```bash\nA=1 python -m aml_pipeline x=1 \\\n  y=2   # note\ncurl -d '{\n\"a\": 1}' && ls\n```") == [
        ["A=1", "python", "-m", "aml_pipeline", "x=1", "y=2"], ["curl", "-d", '{\n"a": 1}'], ["ls"]]


@pytest.mark.parametrize("page,cmd", CLI, ids=[f"{p}:{' '.join(c)[:70]}" for p, c in CLI])
def test_every_aml_pipeline_command_in_the_docs_composes(page, cmd):
    overrides = cli_overrides(cmd)
    for run in one_value_each(overrides):
        compose_checked(run)


def test_other_commands_name_modules_files_flags_and_extras_that_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    problems = []
    for page, cmd in COMMANDS:
        if cmd[:1] == ["python"] and len(cmd) > 2 and cmd[1] == "-m" and cmd[2] != "aml_pipeline":
            if cmd[2] != "pytest" and importlib.util.find_spec(cmd[2]) is None:
                problems.append(f"{page}: no module {cmd[2]}")
        elif cmd[:1] == ["python"] and len(cmd) > 1 and cmd[1].endswith(".py"):
            script = ROOT / cmd[1]
            if not script.is_file():
                problems.append(f"{page}: no file {cmd[1]}")
                continue
            source = script.read_text()
            for flag in (a.split("=")[0] for a in cmd[2:] if a.startswith("--")):
                if f'"{flag}"' not in source:
                    problems.append(f"{page}: {cmd[1]} has no flag {flag}")
        elif cmd[:2] == ["pip", "install"]:
            for arg in cmd[2:]:
                match = re.search(r"\[([^\]]+)\]", arg)
                for extra in match.group(1).split(",") if match else []:
                    if extra.strip() not in extras:
                        problems.append(f"{page}: pyproject.toml has no extra [{extra}]")
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_every_relative_link_and_anchor_resolves():
    problems = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for groups in LINK.findall(text):
            target = groups[0] or groups[1]
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: checked by no one here
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{page.name}: link to missing {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{page.name}: no heading #{anchor} in {file.name}")
    assert not problems, "\n".join(problems)
