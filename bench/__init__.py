"""Benchmarks of basic_inference_server (run from the repository root)."""
