"""`itmatch data ...`: vocabulary and synthetic-data commands."""

import typer

app = typer.Typer(help="Build vocabularies and datasets.", no_args_is_help=True)
