"""Exit codes a model server uses to tell the gateway why it stopped."""

OK = 0
CONFIG_ERROR = 2  # the process was started with an unusable configuration
LOAD_FAILED = 3  # endpoint file/class broken or _load_model raised: restarting will not help
BIND_FAILED = 4  # the port was taken: the gateway may try another port

DESCRIPTIONS = {
    OK: "stopped",
    CONFIG_ERROR: "configuration error",
    LOAD_FAILED: "model failed to load",
    BIND_FAILED: "port already in use",
}
