"""discovery.py: endpoint name -> endpoint file -> worker class, and importing it."""

from __future__ import annotations

import pytest

from basic_inference_server.server.discovery import (
    DiscoveryError,
    WorkerLocation,
    find_endpoint_file,
    import_worker,
    locate_worker,
    normalise,
)


def test_normalise_ignores_case_underscores_and_hyphens():
    assert normalise("Dummy_Model_Demo1") == "dummymodeldemo1"
    assert normalise("dummymodeldemo1") == normalise("DUMMY_MODEL_DEMO1")
    assert normalise("my-model") == normalise("MyModel")
    assert normalise("demo2") != normalise("demo1")


def test_find_endpoint_file_ignores_case_and_underscores(app_root):
    path = app_root.write("DummyModel_Demo1", "class X:\n    pass\n")
    app_root.write("__init__", "")
    app_root.write("other", "")
    assert find_endpoint_file(app_root.folder, "dummy_model_demo1") == path


def test_find_endpoint_file_skips_init(app_root):
    app_root.write("__init__", "")
    with pytest.raises(DiscoveryError, match="no endpoint file for 'init'"):
        find_endpoint_file(app_root.folder, "init")


def test_find_endpoint_file_without_folder(tmp_path):
    with pytest.raises(DiscoveryError, match="does not exist"):
        find_endpoint_file(tmp_path / "missing", "demo")


def test_find_endpoint_file_names_the_expected_path(app_root):
    with pytest.raises(DiscoveryError) as info:
        find_endpoint_file(app_root.folder, "demo")
    assert str(app_root.folder / "demo.py") in str(info.value)


@pytest.mark.parametrize("class_name", ["DummyModelDemo1Worker", "Dummy_Model_Demo1_worker", "DUMMYMODELDEMO1WORKER"])
def test_locate_worker_matches_class_names_loosely(app_root, class_name):
    path = app_root.write("dummy_model_demo1", f"class Helper:\n    pass\n\n\nclass {class_name}:\n    pass\n")
    location = locate_worker(app_root.root, app_root.package, "dummy_model_demo1")
    assert location == WorkerLocation(path, f"{app_root.package}.dummy_model_demo1", class_name)


def test_locate_worker_uses_the_suffix(app_root):
    app_root.write("demo", "class DemoWorker:\n    pass\n\n\nclass DemoServer:\n    pass\n")
    assert locate_worker(app_root.root, app_root.package, "demo", suffix="Server").class_name == "DemoServer"


def test_locate_worker_ignores_nested_classes(app_root):
    app_root.write("demo", "class Outer:\n    class DemoWorker:\n        pass\n")
    with pytest.raises(DiscoveryError, match="expected a class named like DemoWorker"):
        locate_worker(app_root.root, app_root.package, "demo")


def test_locate_worker_reports_syntax_errors_without_importing(app_root):
    app_root.write("demo", "raise SystemExit('imported!')\nclass DemoWorker(:\n    pass\n")
    with pytest.raises(DiscoveryError, match="syntax error at line 2"):
        locate_worker(app_root.root, app_root.package, "demo")


def test_locate_worker_with_dotted_location(tmp_path):
    folder = tmp_path / "app" / "models"
    folder.mkdir(parents=True)
    (folder / "demo.py").write_text("class DemoWorker:\n    pass\n", encoding="utf-8")
    location = locate_worker(tmp_path, "app.models", "demo")
    assert location.module_name == "app.models.demo"
    assert location.module_file == folder / "demo.py"


def test_hyphenated_endpoint_finds_the_class_its_error_message_asks_for(app_root):
    app_root.write("my-model", "class MyModelWorker:\n    pass\n")
    assert locate_worker(app_root.root, app_root.package, "my-model").class_name == "MyModelWorker"


# -- import ------------------------------------------------------------------------------------
def test_import_worker_returns_class_and_config(app_root):
    app_root.write(
        "demo",
        """
        from basic_inference_server import FlaskWorker

        _CONFIG = {"WEIGHT": 3}


        class DemoWorker(FlaskWorker):
            def _predict(self, inputs):
                return inputs
        """,
    )
    location = locate_worker(app_root.root, app_root.package, "demo")
    cls, config = import_worker(app_root.root, location)
    assert cls.__name__ == "DemoWorker"
    assert config == {"WEIGHT": 3}
    worker = cls(default_config=config, upstream_config={"bias": 1})
    assert (worker.cfg_weight, worker.cfg_bias) == (3, 1)


def test_import_worker_without_config_gives_empty_dict(app_root):
    app_root.write("demo", "class DemoWorker:\n    pass\n")
    cls, config = import_worker(app_root.root, locate_worker(app_root.root, app_root.package, "demo"))
    assert cls.__name__ == "DemoWorker"
    assert config == {}


def test_import_time_exception_becomes_discovery_error(app_root):
    app_root.write("demo", "import math\nmath.sqrt(-1)\n\n\nclass DemoWorker:\n    pass\n")
    location = locate_worker(app_root.root, app_root.package, "demo")
    with pytest.raises(DiscoveryError, match="ValueError: math domain error") as info:
        import_worker(app_root.root, location)
    assert str(location.module_file) in str(info.value)


def test_missing_import_becomes_discovery_error(app_root):
    app_root.write("demo", "import no_such_module_for_bis_tests\n\n\nclass DemoWorker:\n    pass\n")
    location = locate_worker(app_root.root, app_root.package, "demo")
    with pytest.raises(DiscoveryError, match="ModuleNotFoundError"):
        import_worker(app_root.root, location)


def test_worker_name_bound_to_non_class(app_root):
    app_root.write("demo", "class DemoWorker:\n    pass\n\n\nDemoWorker = 5\n")
    location = locate_worker(app_root.root, app_root.package, "demo")
    with pytest.raises(DiscoveryError, match="DemoWorker is not a class"):
        import_worker(app_root.root, location)


def test_config_that_is_not_a_dict(app_root):
    app_root.write("demo", "_CONFIG = [1]\n\n\nclass DemoWorker:\n    pass\n")
    location = locate_worker(app_root.root, app_root.package, "demo")
    with pytest.raises(DiscoveryError, match="_CONFIG must be a dict"):
        import_worker(app_root.root, location)
