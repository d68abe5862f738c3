"""``InstanceLocator``: which cell an instance lives in, cached.

"nova show <uuid>" must find the instance's cell before it can query it (the
spec's performance note). Instances rarely move, so the answer is cached in a
bounded LRU. An entry is dropped when the instance is deleted (``forget``),
and callers that do not find the instance in the cached cell forget it and
look again once (it may have moved); a miss reads the API database.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from cellgate.apidb import instances as mapping_db
from cellgate.sql.api_database import ApiDatabase

DEFAULT_LOCATOR_SIZE: Final = 10_000


@dataclass(frozen=True)
class Location:
    cell_uuid: str
    project_id: str


class InstanceLocator:
    def __init__(self, api: ApiDatabase, max_entries: int = DEFAULT_LOCATOR_SIZE) -> None:
        self._api = api
        self._max = max_entries
        self._entries: OrderedDict[str, Location] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def locate(self, instance_uuid: str) -> Location | None:
        """Where the live instance is; ``None`` if it is unknown or being deleted."""
        with self._lock:
            found = self._entries.get(instance_uuid)
            if found is not None:
                self._entries.move_to_end(instance_uuid)
                self.hits += 1
                return found
            self.misses += 1
        with self._api.session() as session:
            mapping = mapping_db.get_mapping(session, instance_uuid)
        if mapping is None or mapping.cell_uuid is None or mapping.queued_for_delete:
            return None
        location = Location(mapping.cell_uuid, mapping.project_id)
        with self._lock:
            self._entries[instance_uuid] = location
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return location

    def forget(self, instance_uuid: str) -> None:
        with self._lock:
            self._entries.pop(instance_uuid, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
