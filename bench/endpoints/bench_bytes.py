"""Bench: moving bytes. Takes TEXT (a string of any size) and answers its length; with ANSWER_KB,
also that many KB of text: what a large request or a large answer costs on its way."""

from basic_inference_server import FlaskWorker


class BenchBytesWorker(FlaskWorker):
    def _load_model(self):
        self.blob = "x" * (8 << 20)

    def _pre_process(self, inputs):
        return len(inputs.get("TEXT", "")), int(inputs.get("ANSWER_KB", 0))

    def _predict(self, prep):
        return prep

    def _post_process(self, pred):
        length, answer_kb = pred
        return {"length": length, "text": self.blob[:answer_kb * 1024]}
