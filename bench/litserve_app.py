"""The bench models served by LitServe (for comparison only), one inference worker.

    <litserve venv>/bin/python bench/litserve_app.py {dummy|numpy|batch8|large|stream|chat} PORT

Run by ``python -m bench --peers litserve``, in its own virtual environment (bench/.venv-litserve).
Requests are the same JSON bodies as the gateway's; the route is LitServe's ``/predict``. The model
code is ``bench/peer_models.py``; ``batch8`` uses LitServe's batching (max_batch_size=8,
batch_timeout=0.002), the others LitServe's defaults.

``stream`` is a LitAPI with ``stream=True`` and ``enable_async=True``: ``predict`` is an async
generator, so that one worker runs many streams at once in its event loop (LitServe's synchronous
streaming loop runs one stream at a time per worker: at c=8 it would measure a queue). Each item
goes out as a line of JSON (LitServe's ``format_encoded_response``), the stream ends with the body.

``chat`` (``python -m bench.openai``) is the same generator in text behind LitServe's OpenAISpec, on
its ``/v1/chat/completions``, async too: ``predict`` yields the pieces, ``encode_response`` a chat
message (role and content) for each, which the spec wraps in a ``chat.completion.chunk``.
"""

import sys

import litserve as ls
from litserve.specs import OpenAISpec
from peer_models import CHAT, MODELS, STREAMED, load


class BenchAPI(ls.LitAPI):
    def __init__(self, name: str):
        model = MODELS[name]
        super().__init__(max_batch_size=model.max_batch_size, batch_timeout=model.batch_wait_s)
        self.name = name

    def setup(self, device):
        self.model = load(self.name)

    def decode_request(self, request):
        return self.model.decode(request)

    def predict(self, x):
        # batched: x is the list of decoded requests (LitServe's default batch() of plain values)
        return self.model.predict_batch(x) if self.max_batch_size > 1 else self.model.predict(x)

    def encode_response(self, output):
        return self.model.encode(output)


class StreamAPI(ls.LitAPI):
    def __init__(self, name: str, **options):
        super().__init__(stream=True, enable_async=True, **options)
        self.name = name

    def setup(self, device):
        self.model = load(self.name)

    async def decode_request(self, request):
        return self.model.decode(request)

    async def predict(self, x):
        async for item in self.model.aitems(x):
            yield item

    async def encode_response(self, outputs):
        async for item in outputs:
            yield self.model.encode(item)


class ChatAPI(StreamAPI):
    def __init__(self, name: str):
        super().__init__(name, spec=OpenAISpec())

    async def encode_response(self, outputs):
        async for piece in outputs:
            yield {"role": "assistant", "content": piece}


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    api = ChatAPI(name) if name in CHAT else StreamAPI(name) if name in STREAMED else BenchAPI(name)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
