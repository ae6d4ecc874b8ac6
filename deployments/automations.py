"""Prefect automations the scaled-out product relies on.

``crash-zombie-flow-runs``: a worker (or its machine) that dies mid-run leaves its
flow run in ``Running`` forever, because nothing is left to report its end. Flow runs
started by a worker emit a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (default 180, minimum 30); this automation marks a run ``Crashed`` when no
heartbeat (and no terminal state) follows the last one within ``within_s`` seconds.
The dispatching ``embed-rois`` run then sees its ``embed-batches`` child end Crashed,
and the dispatch task's retries start a new child for the same batches (batches
already staged are not recomputed). This is Prefect's documented "detect zombie
flows" recipe; Prefect Cloud offers it as a managed automation.

Create it once per server (idempotent)::

    PREFECT_API_URL=... python deployments/automations.py --within 90

``within_s`` must exceed the heartbeat frequency by a margin (heartbeats can lag on
a loaded machine): 3 x the frequency is a safe choice.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import timedelta

ZOMBIE_AUTOMATION = "rs-embed: crash zombie flow runs"


def ensure_zombie_automation(within_s: float = 540.0) -> str:
    """Create (or replace) the automation that crashes flow runs whose heartbeats stopped; returns its id."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    # Absent is the usual case (read raises); an existing one is replaced so --within can change.
    with contextlib.suppress(Exception):
        Automation.read(name=ZOMBIE_AUTOMATION).delete()
    automation = Automation(
        name=ZOMBIE_AUTOMATION,
        description="Mark flow runs Crashed when their heartbeats stop (dead worker or machine).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {within_s:.0f} s: the worker or its machine died.",
            )
        ],
    ).create()
    return str(automation.id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=float, default=540.0, help="seconds without heartbeat before Crashed")
    args = parser.parse_args(argv)
    print(ensure_zombie_automation(args.within))


if __name__ == "__main__":
    main()
