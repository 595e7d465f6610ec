"""`python -m study`: the `study` command."""

from study.cli import app

app()
