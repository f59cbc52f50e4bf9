"""How commands print: aligned columns for a person, `--json` for a program."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import click

from ops.human import age

__all__ = ["age", "cell", "json_option", "print_json", "print_table", "shorten", "to_jsonable"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "(none)") -> None:
    if not rows:
        click.echo(empty)
        return
    texts = [[cell(value) for value in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in texts)) for i, header in enumerate(headers)]
    click.echo("  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip())
    for row in texts:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def shorten(text: str | None, width: int = 70) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"
