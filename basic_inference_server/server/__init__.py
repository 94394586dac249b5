"""One model server process: its HTTP front (`/run` in an event loop, Flask for the rest) and the
internal channel, in front of a worker pool.

Run by the gateway as ``python -m basic_inference_server.server`` with its configuration on
stdin (or ``--config-file PATH``), never on the command line.
"""
