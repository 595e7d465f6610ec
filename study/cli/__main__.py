"""`python -m study.cli`: the `study` command."""

from study.cli import app

app()
