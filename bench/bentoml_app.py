"""BentoML's task API serving the bench's ``dummy`` model, for ``bench/jobs.py --peer``.

    bench/.venv-bentoml/bin/python bench/bentoml_app.py dummy PORT

``@bentoml.task`` gives ``POST /predict/submit`` (answers the task's id), ``GET
/predict/status?task_id=`` and ``GET /predict/get?task_id=``; the model is the same linear model
on one number as ``bench/endpoints/bench_dummy.py``. Run with ``bentoml serve`` on 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml


@bentoml.service(workers=1)
class Dummy:
    @bentoml.task
    def predict(self, INPUT_VALUE: float) -> dict:  # noqa: N803 - the bench body's key, as the other peers take it
        return {"y": INPUT_VALUE * 2 + 1}


if __name__ == "__main__":
    model, port = sys.argv[1], sys.argv[2]
    if model != "dummy":
        sys.exit(f"bentoml_app serves the dummy model only, not {model!r}")
    here = Path(__file__).resolve().parent
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", "bentoml_app:Dummy", "--host", "127.0.0.1",
                              "--port", port, "--working-dir", str(here)])
