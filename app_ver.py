"""Version of the application built on basic_inference_server (reported as ``ver-app``)."""

__VER__ = "1.0.0"
