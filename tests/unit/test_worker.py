"""worker.py: FlaskWorker configuration, notifications and the three hooks."""

from __future__ import annotations

import pytest

from basic_inference_server import FlaskWorker
from basic_inference_server.errors import InputError, InvalidInput, ModelError
from basic_inference_server.server.call import Call
from basic_inference_server.server.hooks import Hooks
from basic_inference_server.server.notifications import GENERAL, INIT, NotificationStore


def execute(worker: FlaskWorker, inputs, call_id: int = 1):
    """Run one call's hooks as a worker thread of the pool does; its result, or its error raised."""
    call = Call(call_id, "-", lambda call: None, inputs=inputs)
    Hooks(worker).run(call)
    if call.error is not None:
        raise call.error
    return call.result


class LinearWorker(FlaskWorker):
    def _predict(self, value):
        return value * self.cfg_weight + self.cfg_bias


def test_cfg_reads_module_config_overridden_by_upstream():
    worker = LinearWorker(default_config={"WEIGHT": 1, "BIAS": 2}, upstream_config={"weight": 5, "Extra": "x"})
    assert worker.cfg_weight == 5
    assert worker.cfg_bias == 2
    assert worker.cfg_extra == "x"
    assert worker.config_data == {"WEIGHT": 5, "BIAS": 2, "EXTRA": "x"}
    assert execute(worker, 3, 1) == 17


def test_user_defined_cfg_property_wins():
    class Custom(LinearWorker):
        @property
        def cfg_weight(self):
            return 100

    worker = Custom(default_config={"WEIGHT": 1, "BIAS": 0})
    assert worker.cfg_weight == 100
    assert execute(worker, 2, 1) == 200


def test_missing_cfg_raises_attribute_error():
    worker = LinearWorker(default_config={"WEIGHT": 1})
    with pytest.raises(AttributeError, match="cfg_bias"):
        _ = worker.cfg_bias
    assert not hasattr(worker, "cfg_missing")
    with pytest.raises(AttributeError):
        _ = worker.not_a_cfg_attribute


def test_missing_cfg_in_predict_is_a_model_error():
    worker = LinearWorker(default_config={"WEIGHT": 1})
    with pytest.raises(ModelError, match="AttributeError in _predict"):
        execute(worker, 2, 1)


def test_config_data_is_per_instance():
    default = {"WEIGHT": 1, "LABELS": ["cat"]}
    a = LinearWorker(default_config=default, upstream_config={"bias": 0})
    b = LinearWorker(default_config=default, upstream_config={"bias": 0})
    a.config_data["WEIGHT"] = 9
    a.config_data["LABELS"].append("dog")
    assert b.cfg_weight == 1
    assert b.cfg_labels == ["cat"]
    assert default == {"WEIGHT": 1, "LABELS": ["cat"]}


def test_upstream_config_values_are_per_instance():
    upstream = {"labels": ["cat"]}
    a = LinearWorker(upstream_config=upstream)
    b = LinearWorker(upstream_config=upstream)
    a.config_data["LABELS"].append("dog")
    assert b.cfg_labels == ["cat"]
    assert upstream == {"labels": ["cat"]}


def test_cfg_dict_value_is_a_copy():
    worker = LinearWorker(default_config={"MAP": {"a": 1}})
    worker.cfg_map["b"] = 2
    assert worker.cfg_map == {"a": 1}


class NotifyingWorker(FlaskWorker):
    def _load_model(self):
        self._create_notification(notif="log", msg="model loaded")

    def _predict(self, inputs):
        self._create_notification(notif="log", msg=f"predicting {inputs['X']}", info={"x": inputs["X"]})
        return inputs["X"]


def test_notifications_go_to_init_then_to_the_call_id():
    store = NotificationStore()
    worker = NotifyingWorker(notifications=store)
    worker._load_model()
    assert execute(worker, {"X": 4}, 12) == 4
    drained = store.drain()
    assert set(drained) == {GENERAL, INIT, "12"}
    assert drained[GENERAL] == []
    (init,) = drained[INIT]
    assert (init["NOTIFICATION_TYPE"], init["MODULE"], init["NOTIF"]) == ("log", "NotifyingWorker", "model loaded")
    (call,) = drained["12"]
    assert call["NOTIF"] == "predicting 4"
    assert call["INFO"] == {"x": 4}
    assert store.drain() == {GENERAL: []}


def test_notif_type_keyword_of_the_original_api():
    store = NotificationStore()
    worker = NotifyingWorker(notifications=store)
    worker._create_notification(notif_type="exception", msg="bad")
    assert store.drain()[INIT][0]["NOTIFICATION_TYPE"] == "exception"


class Spy(FlaskWorker):
    def __init__(self, pre_result, **kwargs):
        super().__init__(**kwargs)
        self.pre_result = pre_result
        self.calls = []

    def _pre_process(self, inputs):
        self.calls.append("pre")
        return self.pre_result

    def _predict(self, prep):
        self.calls.append("predict")
        return prep

    def _post_process(self, pred):
        self.calls.append("post")
        return {"out": pred}


def test_none_from_pre_process_skips_predict():
    worker = Spy(None)
    assert execute(worker, {"A": 1}, 1) is None
    assert worker.calls == ["pre"]


def test_all_hooks_run_in_order():
    worker = Spy(5)
    assert execute(worker, {"A": 1}, 1) == {"out": 5}
    assert worker.calls == ["pre", "predict", "post"]
    assert worker.get_last_query() == {"A": 1}


def test_pre_process_exception_is_invalid_input_and_noted():
    class Strict(FlaskWorker):
        def _pre_process(self, inputs):
            raise KeyError("TEXT")

    store = NotificationStore()
    with pytest.raises(InvalidInput) as info:
        execute(Strict(notifications=store), {}, 3)
    assert info.value.status == 400
    assert info.value.message == "'TEXT'"
    (note,) = store.drain()["3"]
    assert note["NOTIFICATION_TYPE"] == "exception"
    assert "KeyError" in note["NOTIF"]


def test_post_process_exception_is_model_error():
    class Broken(Spy):
        def _post_process(self, pred):
            raise TypeError("cannot format")

    with pytest.raises(ModelError) as info:
        execute(Broken(1), {}, 1)
    assert info.value.status == 500
    assert info.value.message == "TypeError in _post_process: cannot format"


def test_input_error_from_pre_process_keeps_status():
    class Picky(FlaskWorker):
        def _pre_process(self, inputs):
            raise InputError("TEXT longer than 10000 characters", status=422)

    with pytest.raises(InputError) as info:
        execute(Picky(), {}, 1)
    assert info.value.status == 422


def test_predict_must_be_implemented():
    with pytest.raises(ModelError, match="NotImplementedError in _predict"):
        execute(FlaskWorker(), {"A": 1}, 1)
