"""``rmsearch models``: the pretrained models shipped with the package."""

from __future__ import annotations

import json

import click

from rmdata.cliutils import CONTEXT


@click.group("models", context_settings=CONTEXT)
def models_group() -> None:
    """Pretrained response-matched models shipped with rmsearch (use as --potential model:NAME)."""


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of objects (name, kind, elements, backend, description, parameters, size_bytes).")
def list_cmd(as_json: bool) -> None:
    """List the shipped models with their kind, backend and elements."""
    from rmsearch.registry import format_cards, list_models

    cards = list_models()
    if as_json:
        click.echo(json.dumps([c.summary() for c in cards], indent=2))
    elif not cards:
        click.echo("no shipped models found (reinstall rmsearch from a full checkout)")
    else:
        click.echo(format_cards(cards))


@models_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the whole model card as JSON.")
@click.option("--verify/--no-verify", default=True, help="Check the files against the card's SHA-256.")
def show_cmd(name: str, as_json: bool, verify: bool) -> None:
    """Show the model card of NAME: training data, recipe, reproduction command, errors, results."""
    from dataclasses import asdict

    from rmsearch.registry import format_card, get_card, verify_model

    card = get_card(name)
    if verify:
        verify_model(card)
    if as_json:
        click.echo(json.dumps({**asdict(card), "directory": str(card.directory)}, indent=2))
    else:
        click.echo(format_card(card))
        if verify:
            click.echo("files match the card's SHA-256")
