"""Bench: a chat model for the OpenAI route (``"OPENAI": "chat"``), bench_stream's rhythm in text.

ITEMS pieces GAP_MS apart, whatever the request holds (the schedule of ``bench_stream``), each a
short word (`` w<k>``), as a token generator yields them. The same endpoint answers
``/v1/chat/completions`` and ``/run``: bench.openai compares the two routes on this generator,
and LitServe's OpenAISpec on its twin (``bench/peer_models.py``'s ``Chat``).
"""

from endpoints.bench_stream import BenchStreamWorker

_CONFIG = {"ITEMS": 50, "GAP_MS": 10.0, "FIRST_MS": None}


class BenchChatWorker(BenchStreamWorker):
    def _item(self, index, start):
        return f" w{index}"
