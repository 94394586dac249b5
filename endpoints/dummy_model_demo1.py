"""Demo endpoint 1: a linear "model" for numbers and a placeholder word model for text.

POST /run {"SIGNATURE": "dummy_model_demo1", "INPUT_VALUE": 3}
  -> predict_result.dummy_model_a_predict == "3*0 + 0 = 0 PREDICTED" (WEIGHT and BIAS from config)
POST /run {"SIGNATURE": "dummy_model_demo1", "INPUT_VALUE": "house", "LANGUAGE": "en"}
  -> predict_result.dummy_model_a_predict == "same-word-always"
"""

from basic_inference_server import FlaskWorker

_CONFIG = {
    "WEIGHT": 0,
    "BIAS": 0,
    "PLACEHOLDER_MODEL": True,
}

__WORKER_VER__ = "1.3.0"


class WordModelPlaceholder:
    """Stands in for a word-similarity model that would be loaded from disk."""

    def __init__(self, log):
        log.P("Using the placeholder word model", color="y")

    def most_similar(self, word, lang):
        return "same-word-always"


class DummyModelDemo1Worker(FlaskWorker):
    """Numbers go through ``WEIGHT * x + BIAS``; words through the placeholder model."""

    def __init__(self, **kwargs):
        super().__init__(prefix_log="[DUMA]", **kwargs)

    def _load_model(self):
        self.word_model = WordModelPlaceholder(log=self.log)

    def _pre_process(self, inputs):
        if "INPUT_VALUE" not in inputs:
            raise ValueError("INPUT_VALUE should be defined in inputs")
        lang = inputs.get("LANGUAGE", inputs.get("language", "ro"))
        return inputs["INPUT_VALUE"], lang

    def _predict(self, prep_inputs):
        value, lang = prep_inputs
        self._create_notification(notif="log", msg=f"Predicting on {value!r} ({lang})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result = value * self.cfg_weight + self.cfg_bias
            text = f"{value}*{self.cfg_weight} + {self.cfg_bias} = {result} PREDICTED"
        else:
            text = self.word_model.most_similar(str(value), lang)
        return text, prep_inputs

    def _post_process(self, pred):
        text, (value, lang) = pred
        return {
            "dummy_model_a_predict": text,
            "inputs": {"INPUT_VALUE": value, "LANGUAGE": lang},
            "worker_ver": __WORKER_VER__,
        }
