"""Every option of every `meshext` command explains itself in `--help`."""

from __future__ import annotations

import click

from meshext.cli.main import cli


def options_without_help(command: click.Command, path: str) -> list[str]:
    missing = [
        f"{path} {'/'.join(param.opts)}"
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            missing += options_without_help(sub, f"{path} {name}")
    return missing


def commands(command: click.Command, path: str) -> list[str]:
    found = [path]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += commands(sub, f"{path} {name}")
    return found


def test_the_walk_reaches_the_nested_commands() -> None:
    found = commands(cli, "meshext")
    for expected in ("meshext serve", "meshext kube controller", "meshext image build"):
        assert expected in found


def test_every_option_of_every_command_has_help_text() -> None:
    assert options_without_help(cli, "meshext") == []
