"""The garbage collector's policy for the long-running scorers (the service, the stream).

Both hold large, long-lived, acyclic structures: the bundle, a warmed store, and the
feature steps' carried folds (a few tracked lists per account, up to their capacity).
CPython's full collections walk every tracked object that is not frozen, so without a
policy their pause grows with the number of accounts seen, each one stalling every request
queued behind it.

:func:`freeze_long_lived` collects once and freezes what start-up built, then keeps doing so
after every full collection (a ``gc.callbacks`` hook): whatever survives a full collection
is reachable at that moment, and the next full collection walks only what was made since.
Frozen objects are still freed by reference counting when dropped (an evicted fold, a
forgotten account); but one that later becomes part of a garbage *cycle* (a closed
connection's protocol and transport, say) would never be collected. So every
:data:`THAW_EVERY`-th full collection first unfreezes everything and walks it all, collecting
such cycles, then freezes what survives: the memory they hold stays bounded, for one long
pause (the whole heap, as without a policy) that rarely (at 500 requests/s a full
collection comes every 10-15 s, so a thawed one every ~20 minutes).
``python bench/profile_service.py --gc 15000`` (15,000 decisions after the service
benchmark's warm-up): the largest full-collection pause 36.6 ms instead of 70.1 ms with one
``gc.freeze()`` after the warm-up, 54.5 ms in all instead of 116.4 ms.
"""

from __future__ import annotations

import gc

#: One full collection in this many walks everything (see the module doc).
THAW_EVERY = 100

_full_collections = [0]


def _freeze_after_full(phase: str, info: dict) -> None:
    if info.get("generation") != 2:
        return
    if phase == "start":
        _full_collections[0] += 1
        if _full_collections[0] % THAW_EVERY == 0:
            gc.unfreeze()  # this collection walks everything: cycles among frozen objects go
    elif phase == "stop":
        gc.freeze()


def freeze_long_lived() -> None:
    """Collect, freeze what exists, and freeze the survivors of every later full collection
    (every :data:`THAW_EVERY`-th one walking everything first)."""
    gc.collect()
    gc.freeze()
    if _freeze_after_full not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full)
