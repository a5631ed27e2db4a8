"""The alert automation as shipped, and the command that creates it on a server."""

from __future__ import annotations

import subprocess
import sys
from uuid import uuid4

import pytest

from flows.alerts import automations
from tests.conftest import REPO
from tests.flows.conftest import PrefectServer


def test_the_alerts_cover_every_deployed_flow_failing_or_crashing_and_carry_the_state_message() -> None:
    block = uuid4()
    [alert] = automations(block)
    trigger, [action] = alert.trigger, alert.actions
    assert set(trigger.expect) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert trigger.match_related.root["prefect.resource.name"] == [
        "cifar10-pipeline",
        "cifar10-nightly",
        "cifar10-sweep",
    ]
    assert action.type == "send-notification" and action.block_document_id == block
    assert "{{ flow_run.state.message }}" in action.body and "{{ flow_run.id }}" in action.body


@pytest.mark.server
def test_a_missing_block_is_refused_in_one_line(prefect_server: PrefectServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.alerts", "custom-webhook/no-such-block"],
        cwd=REPO,
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: no notification block 'custom-webhook/no-such-block' on the Prefect server")
    ), done.stderr
    with prefect_server.client() as c:
        assert not c.read_automations_by_name("cifar10 failure alerts")
