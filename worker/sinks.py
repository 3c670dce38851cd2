"""The dry-run sink: the same interface as a writing sink, with no way to write; and the
cache-only source, which reads nothing.

Dry run is not a flag checked here and there: the pipeline is handed this sink, which
raises :class:`~worker.errors.DryRunWriteError` on any write. (The Salesforce client used
for a dry run is also read-only at the transport, see :mod:`worker.salesforce`.) Likewise
a command that uses the cache as it is (``explain --no-pull``) is handed the cache-only
source, so it needs no org and no credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from worker.actions import Action, ActionResult
from worker.errors import ConfigError, DryRunWriteError
from worker.ports import ApiUsage, ObjectQuery, OrgIdentity, Page, TargetState
from worker.records import RecordRef


class DryRunSink:
    name = "dry run"

    def __init__(
        self,
        estimate: Callable[[Sequence[Action]], int] = lambda actions: 0,
        usage: Callable[[], ApiUsage | None] = lambda: None,
    ) -> None:
        self._estimate = estimate
        self._usage = usage

    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        raise DryRunWriteError("dry run: apply-time checks are never reached")

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        keys = ", ".join(a.key for a in actions[:3])
        raise DryRunWriteError(f"dry run: refused to write {len(actions)} action(s) ({keys})")

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        raise DryRunWriteError("dry run: reconciling is part of applying")

    def estimate_calls(self, actions: Sequence[Action]) -> int:
        return self._estimate(actions)

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return self._usage()


class CacheOnlySource:
    """Reads nothing: the records are the cache's as it is."""

    name = "cache only"

    def identity(self) -> OrgIdentity:
        raise ConfigError("the cache is used as it is: no org was read, so its Id is not known")

    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        return iter(())

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None
