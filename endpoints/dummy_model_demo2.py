"""Demo endpoint 2: ``int(INPUT_VALUE) * WEIGHT + BIAS`` as text.

POST /run {"SIGNATURE": "dummy_model_demo2", "INPUT_VALUE": 3}
  -> predict_result == {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}
"""

from basic_inference_server import FlaskWorker

_CONFIG = {
    "WEIGHT": 0,
    "BIAS": 0,
}


class DummyModelDemo2Worker(FlaskWorker):
    """A model small enough to read in one breath: a line through the origin."""

    def __init__(self, **kwargs):
        super().__init__(prefix_log="[DUMB]", **kwargs)

    def _load_model(self):
        # Nothing to load: the "model" is WEIGHT and BIAS from the configuration.
        self.P(f"Linear model y = {self.cfg_weight}*x + {self.cfg_bias}")

    def _pre_process(self, inputs):
        if "INPUT_VALUE" not in inputs:
            raise ValueError("INPUT_VALUE should be defined in inputs")
        try:
            return int(inputs["INPUT_VALUE"])
        except (TypeError, ValueError):
            raise ValueError(f"INPUT_VALUE must be an integer, got {inputs['INPUT_VALUE']!r}") from None

    def _predict(self, value):
        self._create_notification(notif="log", msg=f"Predicting on {value}")
        result = value * self.cfg_weight + self.cfg_bias
        return f"{value}*{self.cfg_weight} + {self.cfg_bias} = {result} PREDICTED"

    def _post_process(self, pred):
        return {"dummy_model_predict": pred}
