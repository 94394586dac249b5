"""The bench models served by Aqueduct (for comparison only): aiohttp and one worker process.

    <aqueduct venv>/bin/python bench/aqueduct_app.py {dummy|numpy|batch8|large|pipeline} PORT

Run by ``python -m bench --peers aqueduct``, in its own virtual environment (bench/.venv-aqueduct).
Requests are the same JSON bodies as the gateway's, POSTed to ``/predict``. The model code is
``bench/peer_models.py``; ``batch8`` uses Aqueduct's batching (batch_size=8, batch_timeout=0.002 s),
the others one task per call. The body limit is raised to the gateway's 8 MB (aiohttp's default
is 1 MiB), and its logger set to warnings like the other systems'.

``pipeline`` (bench/pipelines.py) is the three steps of bench/pipeline_steps.py as a Flow of three
FlowSteps, two processes each (as the gateway's steps have two workers each), the 1080p frame and
the tensor passed between them in shared memory (Aqueduct's ``share_value``).
"""

import logging
import sys

import pipeline_steps
from aiohttp import web
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep, log
from aqueduct.integrations.aiohttp import AppIntegrator
from peer_models import MODELS, load

REQUEST_TIMEOUT_S = 10.0  # as wrk's --timeout


class Task(BaseTask):
    def __init__(self, request: dict):
        super().__init__()
        self.request = request
        self.answer = None


class BenchHandler(BaseTaskHandler):
    def __init__(self, name: str):
        self.name = name
        self.model = None

    def on_start(self):
        self.model = load(self.name)  # in the worker process

    def handle(self, *tasks: Task):
        answers = self.model.answer_batch([task.request for task in tasks])
        for task, answer in zip(tasks, answers, strict=True):
            task.answer = answer


class FrameTask(BaseTask):
    def __init__(self, request: dict):
        super().__init__()
        self.request = request
        self.frame = self.tensor = self.answer = None


class Decode(BaseTaskHandler):
    def handle(self, *tasks: FrameTask):
        for task in tasks:
            task.frame = pipeline_steps.decode(task.request)
            task.share_value("frame")


class Preprocess(BaseTaskHandler):
    def handle(self, *tasks: FrameTask):
        for task in tasks:
            task.tensor = pipeline_steps.preprocess(task.frame)
            task.share_value("tensor")


class Classify(BaseTaskHandler):
    def handle(self, *tasks: FrameTask):
        for task in tasks:
            task.answer = pipeline_steps.classify(task.tensor)


async def run_pipeline(request: web.Request) -> web.Response:
    task = FrameTask(await request.json())
    await request.app["flow"].process(task, timeout_sec=REQUEST_TIMEOUT_S)
    return web.json_response(task.answer)


async def predict(request: web.Request) -> web.Response:
    task = Task(await request.json())
    await request.app["flow"].process(task, timeout_sec=REQUEST_TIMEOUT_S)
    return web.json_response(task.answer)


async def create_app(name: str) -> web.Application:
    """Built inside aiohttp's event loop: the Flow binds its result-fetching tasks to the running loop."""
    if name == "pipeline":
        app = web.Application()
        app.router.add_post("/predict", run_pipeline)
        AppIntegrator(app).add_flow(Flow(FlowStep(Decode(), nprocs=2), FlowStep(Preprocess(), nprocs=2),
                                         FlowStep(Classify(), nprocs=2)))
        return app
    model = MODELS[name]
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/predict", predict)
    flow = Flow(FlowStep(BenchHandler(name), nprocs=1, batch_size=model.max_batch_size,
                         batch_timeout=model.batch_wait_s))
    AppIntegrator(app).add_flow(flow)
    return app


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    log.setLevel(logging.WARNING)  # Aqueduct logs every task at DEBUG by default; the others log warnings only
    web.run_app(create_app(name), host="127.0.0.1", port=port, access_log=None, print=None)
