"""The runtime's keys: a master key, and each run's data key kept wrapped in the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .keys import DataKey, MasterKey, WrappedKey, new_data_key
from .seal import Sealer

if TYPE_CHECKING:
    from ..store import Store


class Vault:
    def __init__(self, store: Store, master: MasterKey) -> None:
        self.store = store
        self.master = master

    def new_key(self) -> WrappedKey:
        """A fresh data key, wrapped for storage."""
        return self.master.wrap(new_data_key())

    def new_run(self, run_id: str) -> tuple[WrappedKey, Sealer]:
        """A data key for a run about to start: wrapped to store with it, and in use."""
        key = new_data_key()
        return self.master.wrap(key), Sealer(run_id, DataKey(key))

    def sealer(self, run_id: str, now: float, *, create: bool = True) -> Sealer:
        """The run's sealer. A run that started before data keys existed gets one when it is
        next written to (``create``); until then it has nothing sealed to open."""
        stored = self.store.data_key(run_id)
        if stored is None and not create:
            return Sealer(run_id, None)
        if stored is None:
            self.store.add_data_key(run_id, self.new_key(), now)
            stored = self.store.data_key(run_id)
            assert stored is not None
        if stored.key is None:
            return Sealer(run_id, None, stored.erased_at)
        return Sealer(run_id, DataKey(self.master.unwrap(stored.key, run_id)))
