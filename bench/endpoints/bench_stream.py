"""Bench: a streamed answer, ITEMS items GAP_MS apart (a token generator's rhythm, sleeping).

The k-th item (k = 0 .. ITEMS - 1) is yielded FIRST_MS + GAP_MS x k after ``_predict`` was called:
the first one after FIRST_MS (default GAP_MS), the model's own time to first item. The schedule is
kept against that start, so the time spent between items does not add up. Each item says when it
was yielded, in ms since that start (``ms``): the first item's is the model's own first-item time,
which the bench subtracts from the client's.
"""

import time

from basic_inference_server import FlaskWorker

_CONFIG = {"ITEMS": 50, "GAP_MS": 10.0, "FIRST_MS": None}


class BenchStreamWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        return self._items(time.perf_counter())  # the clock starts now, not at the first next()

    def _items(self, start):
        gap = self.cfg_gap_ms / 1000
        first = gap if self.cfg_first_ms is None else self.cfg_first_ms / 1000
        for index in range(self.cfg_items):
            delay = start + first + gap * index - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # releases the GIL, like waiting for an accelerator
            yield self._item(index, start)

    def _item(self, index, start):
        return {"i": index, "ms": round((time.perf_counter() - start) * 1000, 3)}

    def _post_process(self, item):
        return item
