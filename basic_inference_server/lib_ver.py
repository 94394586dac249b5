"""Version of the basic_inference_server framework (reported as ``ver-lib``)."""

LIB_VER = "9.0.0"
