"""logger.py: the original Logger API over stdlib logging (folders, config, log file)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from basic_inference_server import Logger
from basic_inference_server.config import ConfigError
from basic_inference_server.logs import logging_configured

pytestmark = pytest.mark.usefixtures("clean_root_logging")


def make_logger(tmp_path, **kwargs):
    return Logger(lib_name="UTEST", base_folder=str(tmp_path), app_folder="_cache", TF_KERAS=False,
                  max_lines=3000, **kwargs)


def log_text(log) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    path = os.path.join(log.get_logs_folder(), "UTEST.log")
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_creates_the_cache_folders(tmp_path):
    log = make_logger(tmp_path)
    root = tmp_path / "_cache"
    for sub in ("_logs", "_data", "_models", "_output"):
        assert (root / sub).is_dir()
    assert log.get_data_folder() == str(root / "_data")
    assert log.get_models_folder() == str(root / "_models")
    assert log.get_output_folder() == str(root / "_output")
    assert log.config_data == {}


def test_p_writes_lines_to_the_log_file(tmp_path):
    log = make_logger(tmp_path)
    assert logging_configured()
    log.P("hello from the model")
    log.P("something ERROR happened")
    log.P("watch out", color="r")
    text = log_text(log)
    lines = text.splitlines()
    assert any("INFO" in line and "hello from the model" in line for line in lines)
    assert any("ERROR" in line and "something ERROR happened" in line for line in lines)
    assert any("WARNING" in line and "watch out" in line for line in lines)
    assert f"[{os.getpid()} UTEST]" in text


def test_debug_lines_only_when_debug(tmp_path):
    log = make_logger(tmp_path)
    log.D("hidden detail")
    log.P("visible")
    assert "hidden detail" not in log_text(log)


def test_second_logger_does_not_replace_the_handlers(tmp_path):
    first = make_logger(tmp_path)
    handlers = list(logging.getLogger().handlers)
    second = Logger(lib_name="OTHER", base_folder=str(tmp_path), app_folder="_cache2")
    assert logging.getLogger().handlers == handlers
    second.P("from the second logger")
    assert "from the second logger" in log_text(first)


def test_config_file_is_loaded(tmp_path):
    config_file = tmp_path / "config.txt"
    config_file.write_text(json.dumps({"A": 1, "NESTED": {"B": 2}}), encoding="utf-8")
    log = make_logger(tmp_path, config_file=str(config_file))
    assert log.config_data == {"A": 1, "NESTED": {"B": 2}}


def test_invalid_config_file_is_a_config_error(tmp_path):
    config_file = tmp_path / "config.txt"
    config_file.write_text("{nope", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid JSON"):
        make_logger(tmp_path, config_file=str(config_file))


def test_update_config_data_merges(tmp_path):
    config_file = tmp_path / "config.txt"
    config_file.write_text(json.dumps({"A": 1, "B": 2}), encoding="utf-8")
    log = make_logger(tmp_path, config_file=str(config_file))
    log.update_config_data({"B": 3, "C": 4})
    assert log.config_data == {"A": 1, "B": 3, "C": 4}


def test_override_files_in_data_folder_apply(tmp_path):
    config_file = tmp_path / "config.txt"
    config_file.write_text(json.dumps({"A": 1, "B": 2}), encoding="utf-8")
    data = tmp_path / "_cache" / "_data"
    data.mkdir(parents=True)
    (data / "docker_config.json").write_text(json.dumps({"B": "override"}), encoding="utf-8")
    (data / "readme.json").write_text(json.dumps({"A": "ignored"}), encoding="utf-8")
    log = make_logger(tmp_path, config_file=str(config_file))
    assert log.config_data == {"A": 1, "B": "override"}


def test_data_json_round_trip(tmp_path):
    log = make_logger(tmp_path)
    path = log.save_data_json({"k": [1, 2]}, "state.json")
    assert path == os.path.join(log.get_data_folder(), "state.json")
    assert log.load_data_json("state.json") == {"k": [1, 2]}
    assert log.load_data_json("absent.json") is None
    assert log.get_data_file("absent.json") is None


def test_pickle_round_trip(tmp_path):
    log = make_logger(tmp_path)
    log.save_pickle_to_models({"w": 1.5}, "model.pkl")
    assert log.load_pickle_from_models("model.pkl") == {"w": 1.5}
    assert log.load_pickle_from_data("model.pkl") is None


def test_a_log_folder_that_cannot_be_written_is_said_once_and_the_console_goes_on(tmp_path, capsys):
    from basic_inference_server.logs import setup_process_logging

    blocked = tmp_path / "_logs"
    blocked.write_text("a file where the folder should be")
    assert setup_process_logging("unit", blocked) is None
    logging.getLogger("unit").warning("still logged")
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "still logged" in err and "Traceback" not in err


def test_a_log_file_that_fails_later_is_said_once_and_left_alone(tmp_path, capsys):
    from basic_inference_server.logs import setup_process_logging

    path = setup_process_logging("unit", tmp_path / "_logs")
    file_handler = next(h for h in logging.getLogger().handlers if getattr(h, "baseFilename", None) == str(path))
    file_handler.stream.close()  # as a full disk or a folder gone would make it fail
    for number in range(5):
        logging.getLogger("unit").warning("line %d", number)
    err = capsys.readouterr().err
    assert err.count("logging to stderr only from now on") == 1
    assert "line 4" in err and "Logging error" not in err and "Traceback" not in err
