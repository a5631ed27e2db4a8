"""Failure and crash alerts by Prefect automation (flows/automations/failure-alerts.yaml): create them on
the Prefect server, sending through a notification block the team saved there::

    python -m flows.alerts custom-webhook/cifar10-alerts

Running it again replaces the automations of the same name, so it is safe to repeat after a change.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from tasks.core.cli import run_stage
from tasks.core.errors import StageError

ALERTS = Path(__file__).parent / "automations" / "failure-alerts.yaml"


def automations(block_document_id: UUID, path: Path = ALERTS) -> list[Any]:
    """The file's automations, each notification sent through the block ``block_document_id``."""
    from prefect.automations import AutomationCore

    specs = yaml.safe_load(path.read_text())["automations"]
    for action in (a for spec in specs for a in spec["actions"] if a["type"] == "send-notification"):
        action["block_document_id"] = str(block_document_id)
    return [AutomationCore.model_validate(spec) for spec in specs]


def install(block: str, path: Path = ALERTS) -> dict[str, UUID]:
    """Create the file's automations with the block ``<block-type-slug>/<name>``, replacing any of the same
    name; ``{name: id}``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    type_slug, _, name = block.partition("/")
    if not (type_slug and name):
        raise StageError(f"{block!r} is not a block: give <block-type-slug>/<name>, e.g. custom-webhook/cifar10-alerts")
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name=name, block_type_slug=type_slug)
        except ObjectNotFound:
            why = f"no notification block {block!r} on the Prefect server {client.api_url}"
            raise StageError(f"{why}; save one first (docs/orchestration.md, Alerts)") from None
        created: dict[str, UUID] = {}
        for automation in automations(document.id, path):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created[automation.name] = client.create_automation(automation)
    return created


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("block", help="the notification block, <block-type-slug>/<name>")
    for name, automation_id in install(parser.parse_args(argv).block).items():
        print(f"automation {name!r} created ({automation_id})")


if __name__ == "__main__":
    run_stage(main)
