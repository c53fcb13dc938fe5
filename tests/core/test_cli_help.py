"""Every option of every `meshext` command explains itself in `--help`."""

from __future__ import annotations

import subprocess
import sys

import click

from meshext.cli.main import cli


def subcommands(command: click.Command) -> list[tuple[str, click.Command]]:
    """A group's commands as click looks them up (imported on demand by ``meshext``)."""
    if not isinstance(command, click.Group):
        return []
    ctx = click.Context(command)
    found = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None]


def options_without_help(command: click.Command, path: str) -> list[str]:
    missing = [
        f"{path} {'/'.join(param.opts)}"
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    for name, sub in subcommands(command):
        missing += options_without_help(sub, f"{path} {name}")
    return missing


def commands(command: click.Command, path: str) -> list[str]:
    found = [path]
    for name, sub in subcommands(command):
        found += commands(sub, f"{path} {name}")
    return found


def test_the_walk_reaches_the_nested_commands() -> None:
    found = commands(cli, "meshext")
    for expected in ("meshext serve", "meshext kube controller", "meshext image build"):
        assert expected in found


def test_every_option_of_every_command_has_help_text() -> None:
    assert options_without_help(cli, "meshext") == []


def test_serving_loads_neither_the_kubernetes_client_nor_other_commands() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from meshext.cli.main import cli\n"
        "CliRunner().invoke(cli, ['serve', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kubernetes', 'meshext.cli.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True
    )
    loaded = done.stdout.strip()
    assert "kubernetes" not in loaded
    assert "meshext.cli.kube" not in loaded
    assert "meshext.cli.serve" in loaded
