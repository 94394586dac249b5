"""Bench: an accelerator-like model, 10 ms per call + 0.5 ms per item (so batching pays).

With MAX_BATCH_SIZE > 1 ``_predict`` gets a list; without it, one item.
"""

import time

from basic_inference_server import FlaskWorker

_CONFIG = {"CALL_MS": 10.0, "ITEM_MS": 0.5, "MAX_BATCH_SIZE": 1}


class BenchBatchWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return float(inputs["INPUT_VALUE"])

    def _predict(self, prepared):
        batched = self.cfg_max_batch_size > 1
        items = prepared if batched else [prepared]
        time.sleep((self.cfg_call_ms + self.cfg_item_ms * len(items)) / 1000)  # releases the GIL, like a GPU call
        outputs = [value * 2 for value in items]
        return outputs if batched else outputs[0]

    def _post_process(self, pred):
        return {"y": pred}
