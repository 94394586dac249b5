"""A token-by-token text generator: the streaming example of the README.

A toy "language model" that continues a prompt one word at a time. Ask for a stream to get the
words as they are made; a client that does not gets the whole list in one answer.
"""

import random
import time

from basic_inference_server import FlaskWorker

_CONFIG = {"WORDS_PER_SECOND": 50, "MAX_WORDS": 200}

VOCABULARY = ("the model streams each word as soon as it is ready and the client reads it "
              "while the next one is being made so nobody waits for the last token").split()


class TextGeneratorWorker(FlaskWorker):
    def _load_model(self):
        self.vocabulary = VOCABULARY

    def _pre_process(self, inputs):
        prompt = inputs.get("PROMPT")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("PROMPT should be a non-empty string")
        words = inputs.get("MAX_WORDS", 20)
        if not isinstance(words, int) or not 1 <= words <= self.cfg_max_words:
            raise ValueError(f"MAX_WORDS should be an integer between 1 and {self.cfg_max_words}")
        return prompt, words

    def _predict(self, prep):
        prompt, words = prep
        rng = random.Random(prompt)  # the same prompt gives the same text
        pause = 1.0 / self.cfg_words_per_second
        for index in range(words):
            time.sleep(pause)  # the model's work for one token
            yield index, rng.choice(self.vocabulary)

    def _post_process(self, item):
        index, word = item
        return {"index": index, "token": word}
