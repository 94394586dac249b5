"""The bench models served by Mosec (for comparison only): its Rust HTTP front and one Python worker.

    <mosec venv>/bin/python bench/mosec_app.py {dummy|numpy|batch8|large} PORT

Run by ``python -m bench --peers mosec``, in its own virtual environment (bench/.venv-mosec).
Requests are the same JSON bodies as the gateway's; the route is Mosec's ``/inference``. The model
code is ``bench/peer_models.py``; ``batch8`` uses Mosec's dynamic batching (max_batch_size=8,
max_wait_time=2 ms), the others Mosec's defaults (JSON in and out).
"""

import os
import sys

from mosec import Server, Worker
from peer_models import MODELS, load


class BenchWorker(Worker):
    def __init__(self):
        super().__init__()
        self.model = load(os.environ["BENCH_MODEL"])  # set per worker by append_worker(env=...)

    def forward(self, data):
        if self.max_batch_size > 1:
            return self.model.answer_batch(data)
        return self.model.answer(data)


if __name__ == "__main__":
    name, port = sys.argv[1], sys.argv[2]
    # Mosec reads its settings from the command line: listen on loopback only, on PORT.
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", port, "--log-level", "warning"]
    model = MODELS[name]
    server = Server()
    server.append_worker(BenchWorker, num=1, max_batch_size=model.max_batch_size,
                         max_wait_time=round(model.batch_wait_s * 1000), env=[{"BENCH_MODEL": name}])
    server.run()
