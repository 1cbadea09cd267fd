"""One build of the farm at a time makes a missing layer; the others wait and pull it.

A farm worker starts its builds with ``DIB_FARM_LAYER_LOCKS`` set to its scheduler's
address (docs/farm.md). With a remote cache, such a build wraps its
:class:`~dib.remote.cache.RemoteCache` in :class:`LockedRemote`: a step that misses both the
local and the remote cache takes a Dask lock named after the step's key before it builds, and
gives it back once the layer is pushed. Another build of the farm that misses the same key
meanwhile finds the lock taken, waits for it, and then pulls the layer the first one pushed --
so a layer that several images share is built once in the whole farm, also when the images
start at the same moment. Exactly what the local cache's flock does for builds on one
machine (dib/cache.py), across machines.

Nothing here fails a build: a scheduler that cannot be reached, or a wait that runs out,
is a warning and the step is built here. A build that dies holding a lock loses it when its
connection closes (Dask's lock leases time out). Dask is imported only when the variable is
set, i.e. only in builds a farm worker runs.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

if TYPE_CHECKING:
    from pathlib import Path

    from dib.remote.cache import RemoteCache

log = logging.getLogger("dib.farm")

#: seconds a build waits for another build of the farm to push a layer it also needs
WAIT = 3600.0
#: seconds to reach the scheduler
CONNECT_TIMEOUT = "20s"


def lock_name(key: str) -> str:
    return f"dib-layer-{key}"


class LockedRemote:
    """A remote cache whose misses are built by one build of the farm at a time."""

    def __init__(self, remote: "RemoteCache", address: str) -> None:
        self.remote = remote
        self.address = address
        self._client: Any = None
        self._broken = False
        self._held: Dict[str, Any] = {}
        self.waited = 0

    def __getattr__(self, name: str) -> Any:  # everything else is the remote cache's
        return getattr(self.remote, name)

    def _lock(self, key: str) -> Optional[Any]:
        if self._broken:
            return None
        try:
            import distributed

            dask: Any = distributed  # untyped
            if self._client is None:
                self._client = dask.Client(self.address, timeout=CONNECT_TIMEOUT)
            return dask.Lock(lock_name(key))
        except Exception as exc:  # the farm's scheduler is gone: build without locks
            self._broken = True
            log.warning("farm layer locks at %s unavailable (%s): missing layers are built "
                        "here without asking the other builds", self.address, exc)
            return None

    def fetch(self, key: str, step_id: str, inputs: Mapping[str, Any]) -> Optional["Path"]:
        layer = self.remote.fetch(key, step_id, inputs)
        if layer is not None or key in self._held:
            return layer
        lock = self._lock(key)
        if lock is None:
            return None
        try:
            if lock.acquire(blocking=False):
                self._held[key] = lock   # ours to build; given back after the push
                return None
            log.info("%s: another build of the farm is making this layer; waiting for it",
                     step_id)
            self.waited += 1
            if not lock.acquire(timeout=WAIT):
                log.warning("%s: waited %.0f s for another build of the farm; building it "
                            "here", step_id, WAIT)
                return None
        except Exception as exc:
            log.warning("%s: farm layer lock failed (%s); building it here", step_id, exc)
            return None
        self._held[key] = lock
        layer = self.remote.fetch(key, step_id, inputs)
        if layer is not None:
            self._release(key)
        return layer

    def push(self, key: str, layer: "Path", step_id: str) -> bool:
        try:
            return self.remote.push(key, layer, step_id)
        finally:
            # every lock held was taken for this step (a step may miss under two keys, its
            # content key and its chained one): all are given back with its layer
            for held in list(self._held):
                self._release(held)

    def _release(self, key: str) -> None:
        lock = self._held.pop(key, None)
        if lock is not None:
            try:
                lock.release()
            except Exception as exc:  # the lease ran out meanwhile
                log.debug("farm layer lock %s: %s", key, exc)

    def report(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.remote.report())
        out["farm_waits"] = self.waited
        return out

    def close(self) -> None:
        for key in list(self._held):
            self._release(key)
        if self._client is not None:
            try:
                self._client.close()
            except Exception as exc:
                log.debug("farm layer locks: closing the client: %s", exc)
            self._client = None
