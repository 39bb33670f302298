"""``asterisk-ids``: with several Asterisks in ARI_URL, each must report an entity id of its
own, since that is what every entry records as its ``asterisk_id``.

Asterisk takes the entity id from ``entityid`` in asterisk.conf's ``[options]``, else from a
network interface's MAC address: two Asterisks on one host, or cloned virtual machines, report
the same one.
"""

from __future__ import annotations

from collections.abc import Mapping

from ari_app.ari.client import AriClient
from ari_app.doctor.lookups import LOOKUP_ERRORS, lookup
from ari_app.doctor.report import CheckResult, Status

NAME = "asterisk-ids"


async def fetch_entity_id(client: AriClient) -> str | None:
    """The entity id ``GET /asterisk/info`` reports; None when it gives none."""
    try:
        status, body = await lookup(client, "asterisk/info")
    except LOOKUP_ERRORS:
        return None
    system = body.get("system") if status == 200 and isinstance(body, dict) else None
    entity_id = system.get("entity_id") if isinstance(system, dict) else None
    return entity_id if isinstance(entity_id, str) and entity_id else None


def check_asterisk_ids(entity_ids: Mapping[int, str | None]) -> CheckResult:
    """``entity_ids``: by position in ARI_URL, each reachable Asterisk's entity id."""
    known = {endpoint: entity_id for endpoint, entity_id in entity_ids.items() if entity_id}
    if len(known) < 2:
        return CheckResult(NAME, Status.SKIP, "needs the entity ids of two Asterisks at least")
    by_id: dict[str, list[int]] = {}
    for endpoint, entity_id in sorted(known.items()):
        by_id.setdefault(entity_id, []).append(endpoint)
    shared = {entity_id: endpoints for entity_id, endpoints in by_id.items() if len(endpoints) > 1}
    if shared:
        clashes = "; ".join(
            f"{' and '.join(map(str, endpoints))} report {entity_id}"
            for entity_id, endpoints in shared.items()
        )
        return CheckResult(
            NAME,
            Status.WARN,
            f"Asterisks {clashes}: their entries' asterisk_id cannot tell them apart",
            "set a distinct entityid (a MAC-style id) in each asterisk.conf [options], then "
            "restart that Asterisk",
        )
    return CheckResult(NAME, Status.PASS, f"{len(known)} Asterisks, each with its own entity id")
