"""``spikesort params``: every sorting parameter as a TOML template."""

from __future__ import annotations

import click

from spikesort.params import Params

from .app import main


@main.command("params")
def params_cmd():
    """Print every parameter as a commented TOML template (edit it, pass it with --config)."""
    click.echo(Params().to_toml(), nl=False)
