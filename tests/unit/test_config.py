"""config.py: a bad config_gateway.txt stops with a message naming the key and the expected value."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import pytest

from basic_inference_server.config import (
    ConfigError,
    apply_overrides,
    load_config,
    parse_config,
)

WORKER_SOURCE = """
from basic_inference_server import FlaskWorker


class DemoWorker(FlaskWorker):
    def _predict(self, inputs):
        return inputs
"""


@pytest.fixture
def root(app_root):
    app_root.write("demo", WORKER_SOURCE)
    return app_root


def parse(root, endpoints, **top):
    return parse_config({"CONFIG_ENDPOINTS": endpoints, **top}, root.root, root.package)


def config_error(root, endpoints, **top) -> str:
    with pytest.raises(ConfigError) as info:
        parse(root, endpoints, **top)
    return str(info.value)


# -- files -------------------------------------------------------------------------------------
def test_invalid_json_file_names_the_file(tmp_path):
    path = tmp_path / "config_gateway.txt"
    path.write_text('{"CONFIG_ENDPOINTS": {', encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid JSON") as info:
        load_config(path, app_root=tmp_path)
    assert str(path) in str(info.value)


def test_top_level_list_in_file_is_rejected(tmp_path):
    path = tmp_path / "config_gateway.txt"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a JSON object at the top level, got list"):
        load_config(path, app_root=tmp_path)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "nope.txt")


def test_parse_config_rejects_non_object():
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        parse_config([{"CONFIG_ENDPOINTS": {}}])


# -- invalid values ----------------------------------------------------------------------------
def test_config_endpoints_must_be_an_object(root):
    message = config_error(root, ["demo"])
    assert message.startswith("CONFIG_ENDPOINTS: expected an object")
    assert message.endswith('got ["demo"]')


def test_endpoint_value_must_be_an_object(root):
    message = config_error(root, {"demo": 5})
    assert message == "CONFIG_ENDPOINTS.demo: expected an object of endpoint settings, got 5"


@pytest.mark.parametrize("value", [0, -1, "2", 2.5, True], ids=["zero", "negative", "string", "float", "bool"])
def test_nr_workers_must_be_a_positive_integer(root, value):
    message = config_error(root, {"demo": {"NR_WORKERS": value}})
    assert message.startswith("CONFIG_ENDPOINTS.demo.NR_WORKERS: expected an integer >= 1")
    assert message.endswith(f"got {json.dumps(value)}")


def test_missing_endpoint_file_is_named(root):
    message = config_error(root, {"other": {"NR_WORKERS": 1}})
    assert message.startswith("CONFIG_ENDPOINTS.other: no endpoint file for 'other'")
    assert str(root.folder / "other.py") in message


# A file that exists but cannot load is no configuration error any more (issue 23): its endpoint
# starts FAILED with the reason and the others serve; a missing file still stops the start.
def test_missing_worker_class_makes_a_problem_naming_the_expected_class(root):
    root.write("lonely", "class SomethingElse:\n    pass\n")
    config = parse(root, {"lonely": {"NR_WORKERS": 1}})
    (problem,) = config.file_problems()
    assert problem.startswith("CONFIG_ENDPOINTS.lonely: ")
    assert "no worker class for 'lonely'" in problem and "LonelyWorker" in problem


def test_syntax_error_in_endpoint_file_makes_a_problem_naming_the_line(root):
    root.write("broken", "class BrokenWorker:\n    def oops(:\n        pass\n")
    config = parse(root, {"broken": {"NR_WORKERS": 1}, "demo": {"NR_WORKERS": 1}})
    assert config.endpoint("demo").problem == ""
    assert config.endpoint("broken").worker.module_file.name == "broken.py"
    assert "syntax error at line 2" in config.endpoint("broken").problem
    assert config.file_problems() == [f"CONFIG_ENDPOINTS.broken: {config.endpoint('broken').problem}"]


def test_a_disabled_endpoints_problem_is_not_one_of_the_start(root):
    root.write("broken", "class BrokenWorker:\n    def oops(:\n        pass\n")
    config = parse(root, {"broken": {"NR_WORKERS": 1, "DISABLED": True}})
    assert config.endpoint("broken").problem and config.file_problems() == []


@pytest.mark.parametrize("host", [123, "", None])
def test_host_must_be_a_non_empty_string(root, host):
    message = config_error(root, {"demo": {"NR_WORKERS": 1, "HOST": host}})
    assert message.startswith("CONFIG_ENDPOINTS.demo.HOST: expected an IP address")
    assert message.endswith(f"got {json.dumps(host)}")


def test_disabled_must_be_a_boolean(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1, "DISABLED": "yes"}})
    assert message == 'CONFIG_ENDPOINTS.demo.DISABLED: expected true or false, got "yes"'


def test_request_timeout_must_be_positive(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1, "REQUEST_TIMEOUT": 0}})
    assert message == "CONFIG_ENDPOINTS.demo.REQUEST_TIMEOUT: expected a number > 0 and <= 86400, got 0"


def test_request_timeout_has_an_upper_bound(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1, "REQUEST_TIMEOUT": 1e10}})
    assert message.startswith("CONFIG_ENDPOINTS.demo.REQUEST_TIMEOUT: expected a number > 0 and <= 86400")


def test_max_queue_must_be_positive(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1, "MAX_QUEUE": 0}})
    assert message.startswith("CONFIG_ENDPOINTS.demo.MAX_QUEUE: expected an integer >= 1")
    assert message.endswith("got 0")


def test_endpoint_response_format_must_be_known(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1, "RESPONSE_FORMAT": "weird"}})
    assert message == 'CONFIG_ENDPOINTS.demo.RESPONSE_FORMAT: expected "nested" or "flat", got "weird"'


def test_top_level_response_format_must_be_known(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1}}, RESPONSE_FORMAT="weird")
    assert message == 'RESPONSE_FORMAT: expected "nested" or "flat", got "weird"'


def test_reserved_endpoint_name_is_rejected(root):
    message = config_error(root, {"SYSTEM_STATUS": {"NR_WORKERS": 1}})
    assert message == "CONFIG_ENDPOINTS.SYSTEM_STATUS: the name 'SYSTEM_STATUS' is reserved"


@pytest.mark.parametrize("name", ["a/b", "../demo", "", "-demo"])
def test_endpoint_name_must_be_a_plain_name(root, name):
    message = config_error(root, {name: {"NR_WORKERS": 1}})
    assert message.startswith(f"CONFIG_ENDPOINTS.{name}: expected an endpoint name of letters")


def test_short_admin_token_is_rejected(root):
    message = config_error(root, {"demo": {"NR_WORKERS": 1}}, ADMIN_TOKEN="short")
    assert message.startswith("ADMIN_TOKEN: expected a string of at least 8 characters")


def test_first_port_near_the_top_does_not_blame_an_unset_last_port(root):
    config = parse(root, {"demo": {"NR_WORKERS": 1}}, FIRST_SERVER_PORT=65530)
    assert config.first_server_port == 65530
    assert config.last_server_port == 65535


# -- valid configurations ----------------------------------------------------------------------
def test_defaults_of_an_endpoint(root):
    config = parse(root, {"demo": {}})
    (endpoint,) = config.endpoints
    assert endpoint.nr_workers == 5
    assert endpoint.host == "127.0.0.1"
    assert endpoint.request_timeout == 60.0
    assert endpoint.max_queue == 64
    assert endpoint.disabled is False
    assert endpoint.response_format is None
    assert endpoint.server_class == "demo"
    assert endpoint.worker.class_name == "DemoWorker"
    assert endpoint.worker.module_name == f"{root.package}.demo"
    assert endpoint.worker.module_file == root.folder / "demo.py"
    assert config.response_format == "nested"
    assert (config.first_server_port, config.last_server_port) == (5003, 5010)
    assert config.endpoint("demo") is endpoint
    assert config.endpoint("missing") is None


def test_endpoint_order_is_the_file_order(root):
    for name in ("zeta", "alpha", "mid"):
        root.write(name, f"class {name.capitalize()}Worker:\n    pass\n")
    config = parse(root, {"zeta": {"NR_WORKERS": 1}, "alpha": {"NR_WORKERS": 1}, "mid": {"NR_WORKERS": 1}})
    assert [e.name for e in config.endpoints] == ["zeta", "alpha", "mid"]


def test_disabled_endpoint_with_missing_class_does_not_stop_startup(root):
    config = parse(root, {"ghost": {"NR_WORKERS": 1, "DISABLED": True}, "demo": {"NR_WORKERS": 1}})
    ghost = config.endpoint("ghost")
    assert ghost.disabled is True
    assert ghost.worker is None
    assert config.endpoint("demo").worker.class_name == "DemoWorker"


def test_disabled_endpoint_with_existing_class_is_located(root):
    config = parse(root, {"demo": {"NR_WORKERS": 1, "DISABLED": True}})
    assert config.endpoint("demo").worker.class_name == "DemoWorker"


def test_no_host_support_process_needs_a_script_but_no_worker_class(root):
    root.write("support_process", "print('a support script')\n")
    config = parse(root, {"support_process": {"HOST": "NO_HOST", "PING_INTERVAL": 3}, "demo": {"NR_WORKERS": 1}})
    support = config.endpoint("support_process")
    assert support.is_support
    assert support.worker is None
    assert support.script is not None and support.script.name == "support_process.py"
    assert support.ping_interval == 3.0
    assert [e.name for e in config.model_endpoints] == ["demo"]


def test_missing_support_script_is_a_config_error(root):
    message = config_error(root, {"watcher": {"HOST": "NO_HOST"}, "demo": {"NR_WORKERS": 1}})
    assert message.startswith("CONFIG_ENDPOINTS.watcher: support process: no endpoint file for 'watcher'")


def test_disabled_support_entry_needs_no_script_but_keeps_it_when_present(root):
    config = parse(root, {"watcher": {"HOST": "NO_HOST", "DISABLED": True}})
    assert config.endpoint("watcher").script is None
    root.write("watcher", "print('watching')\n")
    config = parse(root, {"watcher": {"HOST": "NO_HOST", "DISABLED": True}})
    assert config.endpoint("watcher").script.name == "watcher.py"  # so /start_server can run it


def test_server_class_resolves_another_file(root):
    config = parse(root, {"demo-bis": {"NR_WORKERS": 2, "SERVER_CLASS": "demo"}})
    endpoint = config.endpoint("demo-bis")
    assert endpoint.server_class == "demo"
    assert endpoint.worker.module_file == root.folder / "demo.py"
    assert endpoint.worker.class_name == "DemoWorker"


def test_worker_config_has_upper_cased_keys(root):
    config = parse(root, {"demo": {"NR_WORKERS": 1, "weight": 2, "Bias": 3}})
    worker_config = config.endpoint("demo").worker_config
    assert worker_config["WEIGHT"] == 2
    assert worker_config["BIAS"] == 3
    assert worker_config["NR_WORKERS"] == 1
    assert "weight" not in worker_config


def test_parsed_config_is_frozen(root):
    config = parse(root, {"demo": {"NR_WORKERS": 1, "weight": 2}})
    endpoint = config.endpoint("demo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        endpoint.nr_workers = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.admin_token = "x" * 10
    with pytest.raises(TypeError):
        endpoint.worker_config["WEIGHT"] = 5
    with pytest.raises(TypeError):
        config.raw["SERVER_NAME"] = "other"


def test_load_config_reads_a_valid_file(root):
    path = root.root / "config_gateway.txt"
    path.write_text(
        json.dumps({"SERVER_NAME": "srv", "ADMIN_TOKEN": "secret-token", "MAX_BODY_MB": 1,
                    "CONFIG_ENDPOINTS": {"demo": {"NR_WORKERS": 2, "RESPONSE_FORMAT": "flat"}}}),
        encoding="utf-8",
    )
    config = load_config(path, app_root=root.root, workers_location=root.package)
    assert config.server_name == "srv"
    assert config.admin_token == "secret-token"
    assert config.max_body_bytes == 1024 * 1024
    assert config.endpoint("demo").nr_workers == 2
    assert config.endpoint("demo").response_format == "flat"


# -- overrides from _data ----------------------------------------------------------------------
def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")


def test_overrides_replace_top_level_keys_in_sorted_order(tmp_path):
    data_folder = tmp_path / "_data"
    data_folder.mkdir()
    write_json(data_folder / "b_cfg.txt", {"SERVER_NAME": "second"})
    write_json(data_folder / "a_my_config.json", {"SERVER_NAME": "first", "EXTRA": 1})
    original = {"SERVER_NAME": "orig", "KEEP": True, "CONFIG_ENDPOINTS": {"x": {}}}
    merged = apply_overrides(original, data_folder)
    assert merged == {"SERVER_NAME": "second", "KEEP": True, "CONFIG_ENDPOINTS": {"x": {}}, "EXTRA": 1}
    assert original["SERVER_NAME"] == "orig"


def test_overrides_replace_whole_keys_not_merge(tmp_path):
    data_folder = tmp_path / "_data"
    data_folder.mkdir()
    write_json(data_folder / "my_config.json", {"CONFIG_ENDPOINTS": {"y": {}}})
    merged = apply_overrides({"CONFIG_ENDPOINTS": {"x": {}}}, data_folder)
    assert merged["CONFIG_ENDPOINTS"] == {"y": {}}


def test_files_without_marker_or_with_other_extensions_are_ignored(tmp_path):
    data_folder = tmp_path / "_data"
    data_folder.mkdir()
    write_json(data_folder / "settings.json", {"SERVER_NAME": "no marker"})
    write_json(data_folder / "my_config.yaml", {"SERVER_NAME": "wrong extension"})
    write_json(data_folder / "x_cfg.json.bak", {"SERVER_NAME": "backup"})
    (data_folder / "folder_conf.json").mkdir()
    assert apply_overrides({"SERVER_NAME": "orig"}, data_folder) == {"SERVER_NAME": "orig"}


def test_missing_data_folder_changes_nothing(tmp_path):
    assert apply_overrides({"A": 1}, tmp_path / "absent") == {"A": 1}


def test_invalid_override_names_the_file(tmp_path):
    data_folder = tmp_path / "_data"
    data_folder.mkdir()
    (data_folder / "broken_conf.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("broken_conf.json") + ".*invalid JSON"):
        apply_overrides({"A": 1}, data_folder)


def test_load_config_applies_overrides_before_validation(root):
    path = root.root / "config_gateway.txt"
    write_json(path, {"CONFIG_ENDPOINTS": {"demo": {"NR_WORKERS": 0}}})
    data_folder = root.root / "_data"
    data_folder.mkdir()
    write_json(data_folder / "docker_config.json", {"CONFIG_ENDPOINTS": {"demo": {"NR_WORKERS": 3}}})
    config = load_config(path, data_folder=data_folder, app_root=root.root, workers_location=root.package)
    assert config.endpoint("demo").nr_workers == 3


def test_batching_keys(root):
    endpoint = parse(root, {"demo": {"NR_WORKERS": 1, "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 2.5}}).endpoint("demo")
    assert (endpoint.max_batch_size, endpoint.max_batch_wait_ms) == (8, 2.5)
    plain = parse(root, {"demo": {"NR_WORKERS": 1}}).endpoint("demo")
    assert plain.max_batch_size == 1
    assert config_error(root, {"demo": {"NR_WORKERS": 1, "MAX_BATCH_SIZE": 0}}).startswith(
        "CONFIG_ENDPOINTS.demo.MAX_BATCH_SIZE: expected an integer >= 1")


# -- placement and warmup ------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["gpu", "cuda", "cuda:x", [], ["cpu", 1], {"cuda": 0}])
def test_devices_must_be_cpu_or_cuda_n(root, value):
    message = config_error(root, {"demo": {"DEVICES": value}})
    assert message.startswith('CONFIG_ENDPOINTS.demo.DEVICES: expected "cpu", "cuda:<n>" or a non-empty list')


def test_devices_are_kept_in_order(root):
    (endpoint,) = parse(root, {"demo": {"DEVICES": ["cuda:1", "cpu"]}}).endpoints
    assert endpoint.devices == ("cuda:1", "cpu")
    (single,) = parse(root, {"demo": {"DEVICES": "cpu"}}).endpoints
    assert single.devices == ("cpu",)
    (none,) = parse(root, {"demo": {}}).endpoints
    assert none.devices == ()


@pytest.mark.parametrize("value", [{"VALUE": 1}, [1, 2], "x", [{"VALUE": 1}, None]])
def test_warmup_inputs_must_be_a_list_of_bodies(root, value):
    message = config_error(root, {"demo": {"WARMUP_INPUTS": value}})
    assert message.startswith("CONFIG_ENDPOINTS.demo.WARMUP_INPUTS: expected a list of request bodies")


# -- URLS (remote endpoints) -------------------------------------------------------------------
def test_urls_make_a_remote_endpoint_without_an_endpoint_file_here(root):
    config = parse(root, {"far": {"URLS": ["http://10.0.0.5:5003", "http://tasks.far:5003/", "http://10.0.0.5:5003"],
                                  "NR_WORKERS": 2}})
    far = config.endpoint("far")
    assert far.is_remote and far.worker is None  # no far.py needed in this gateway's endpoints/
    assert far.urls == (("10.0.0.5", 5003), ("tasks.far", 5003))  # duplicates once
    assert parse(root, {"far": {"URLS": "http://far"}}).endpoint("far").urls == (("far", 80),)
    assert not parse(root, {"demo": {"NR_WORKERS": 1}}).endpoint("demo").is_remote


def test_https_urls_take_tls_and_default_to_port_443(root):
    far = parse(root, {"far": {"URLS": ["https://far.example", "https://[fd00::5]:5003"]}}).endpoint("far")
    assert far.tls and far.urls == (("far.example", 443), ("fd00::5", 5003))
    assert [far.url_of(*url) for url in far.urls] == ["https://far.example:443", "https://[fd00::5]:5003"]
    assert not parse(root, {"far": {"URLS": "http://far"}}).endpoint("far").tls


@pytest.mark.parametrize("value", [[], "far:5003", ["ftp://far:5003"], ["http://far:5003/run"], ["http://:5003"],
                                   ["http://far:99999"], [5003], {"a": "http://far"}])
def test_bad_urls_are_refused_with_the_key(root, value):
    message = config_error(root, {"far": {"URLS": value}})
    assert message.startswith("CONFIG_ENDPOINTS.far.URLS: ")


def test_one_endpoint_does_not_mix_http_and_https(root):
    message = config_error(root, {"far": {"URLS": ["http://a:5003", "https://b:5003"]}})
    assert message == "CONFIG_ENDPOINTS.far.URLS: mixes http:// and https://; the servers of one endpoint take the same"


# -- BIS_TLS_*: TLS on the hop to remote model servers ----------------------------------------------
def test_tls_files_load_in_pairs_and_name_what_is_wrong(monkeypatch, tmp_path):
    trustme = pytest.importorskip("trustme")
    from basic_inference_server.tlsfiles import client_context, server_context

    for name in ("BIS_TLS_CERT_FILE", "BIS_TLS_KEY_FILE", "BIS_TLS_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert server_context() is None
    assert client_context().verify_mode.name == "CERT_REQUIRED"
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.write_bytes(issued.cert_chain_pems[0].bytes())
    key.write_bytes(issued.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("BIS_TLS_CERT_FILE", str(cert))
    with pytest.raises(ValueError, match="BIS_TLS_CERT_FILE and BIS_TLS_KEY_FILE go together"):
        server_context()
    monkeypatch.setenv("BIS_TLS_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="no such file: .*missing.key"):
        server_context()
    monkeypatch.setenv("BIS_TLS_KEY_FILE", str(ca_file))  # a certificate where the key should be
    with pytest.raises(ValueError, match="do not load as a PEM certificate chain"):
        server_context()
    monkeypatch.setenv("BIS_TLS_KEY_FILE", str(key))
    assert server_context() is not None
    if shutil.which("openssl"):  # an encrypted key is refused, never asked for on a terminal
        encrypted = tmp_path / "encrypted.key"
        subprocess.run(["openssl", "pkey", "-in", str(key), "-out", str(encrypted), "-aes256", "-passout",
                        "pass:secret"], check=True, capture_output=True)
        monkeypatch.setenv("BIS_TLS_KEY_FILE", str(encrypted))
        with pytest.raises(ValueError, match="is encrypted: give the server an unencrypted key"):
            server_context()
    monkeypatch.setenv("BIS_TLS_CA_FILE", str(key))
    with pytest.raises(ValueError, match="BIS_TLS_CA_FILE .* does not load as PEM certificates"):
        client_context()
    monkeypatch.setenv("BIS_TLS_CA_FILE", str(ca_file))
    assert client_context().cert_store_stats()["x509_ca"] == 1  # that CA alone, not the system's


# -- BIS_ENDPOINT_TOKEN(_FILE): the shared secret of gateways and remote model servers ---------------
def test_the_endpoint_secret_comes_from_the_variable_or_a_secret_file(monkeypatch, tmp_path):
    from basic_inference_server.webutil import endpoint_token

    monkeypatch.delenv("BIS_ENDPOINT_TOKEN", raising=False)
    monkeypatch.delenv("BIS_ENDPOINT_TOKEN_FILE", raising=False)
    assert endpoint_token() is None
    secret = tmp_path / "bis_endpoint_token"
    secret.write_text("from-a-docker-secret\n")
    monkeypatch.setenv("BIS_ENDPOINT_TOKEN_FILE", str(secret))
    assert endpoint_token() == "from-a-docker-secret"
    monkeypatch.setenv("BIS_ENDPOINT_TOKEN", "from-the-variable")
    assert endpoint_token() == "from-the-variable"  # the variable wins
    monkeypatch.delenv("BIS_ENDPOINT_TOKEN")
    secret.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        endpoint_token()
    monkeypatch.setenv("BIS_ENDPOINT_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read .*missing"):
        endpoint_token()


# -- the settings schema -------------------------------------------------------------------------
def test_a_near_miss_of_a_setting_is_said_with_what_it_is_close_to(root, caplog):
    with caplog.at_level("WARNING"):
        config = parse(root, {"demo": {"NR_WORKERS": 1, "MAX_BATCH_SIZ": 8, "WEIGHT": 2}}, MAX_BODY_MBS=4)
    text = caplog.text
    assert "CONFIG_ENDPOINTS.demo.MAX_BATCH_SIZ is no framework setting" in text
    assert "did you mean MAX_BATCH_SIZE?" in text
    assert "MAX_BODY_MBS is no setting of the configuration's top level: did you mean MAX_BODY_MB?" in text
    assert "WEIGHT" not in text  # an endpoint's own key, nowhere near a setting
    assert config.endpoints[0].worker_config["MAX_BATCH_SIZ"] == 8  # still the endpoint's own configuration


def test_every_setting_the_parser_reads_is_declared_and_documented():
    from pathlib import Path

    from basic_inference_server import settings

    source = (Path(settings.__file__).parent / "config.py").read_text()
    read_keys = set(re.findall(r'(?:read\(data|get)\("([A-Z_]+)"', source))
    declared = {s.key for s in settings.SETTINGS}
    assert read_keys and read_keys <= declared, read_keys - declared
    reference = settings.reference()
    assert all(f"`{key}`" in reference for key in declared)
    assert all(s.doc for s in settings.SETTINGS)


def test_the_schema_checks_bounds_and_types():
    from basic_inference_server.settings import Scope, read

    assert read({}, "MAX_BODY_MB") == 8
    assert read({"MAX_BODY_MB": 2}, "MAX_BODY_MB") == 2.0
    with pytest.raises(ConfigError, match=r"MAX_JSON_DEPTH: expected an integer >= 1 and <= 900, got 901"):
        read({"MAX_JSON_DEPTH": 901}, "MAX_JSON_DEPTH")
    with pytest.raises(ConfigError, match=r"X.DISABLED: expected true or false, got \"yes\""):
        read({"DISABLED": "yes"}, "DISABLED", Scope.ENDPOINT, "X")
