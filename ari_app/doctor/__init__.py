"""``ari-digits doctor``: is this Asterisk, this host and this database ready for ari-digits?

One module per check, each a small coroutine (or a pure function over what ARI answered)
returning a :class:`~ari_app.doctor.report.CheckResult`: :mod:`.ari`, :mod:`.modules`,
:mod:`.stasis_app`, :mod:`.sounds`, :mod:`.rtp_probe`, :mod:`.database`, :mod:`.journal`,
:mod:`.text_engine`, and last the safe-defaults checks of :mod:`.security` (hash key, ARI
password, TLS, API token). Where ARI_URL lists several Asterisks, the checks of one Asterisk
run for each, named ``[1] ari``, ``[2] ari``, ... by position, and :mod:`.asterisk_ids` checks
that their entity ids differ.
ARI is reached through the product's own client (:mod:`ari_app.ari.client`).
:func:`~ari_app.doctor.run.run_checks` runs them in order and the command prints one line per
check as it completes. Checks that need ARI are skipped, not failed, when ARI itself is
unreachable, so the one real cause stands out. Exit status: 1 when any check FAILs; WARN and SKIP
keep it 0.

Why the Stasis app check only WARNs: Asterisk lists an application only while a websocket holds
it, so it is absent whenever ``ari-digits serve`` is not running, which is the normal state when
an operator checks a setup before starting the service. The doctor never registers the service's
own app name: a second websocket for a name replaces the first, which would steal the running
service's calls. The RTP probe registers a throw-away app of its own instead, and that proves the
event websocket can register applications.
"""

from ari_app.doctor.report import CheckResult, Status, exit_status, summary
from ari_app.doctor.run import doctor, run_checks

__all__ = ["CheckResult", "Status", "doctor", "exit_status", "run_checks", "summary"]
