"""One model server process: a Flask app under waitress in front of a worker pool.

Run by the gateway as ``python -m basic_inference_server.server`` with its configuration on
stdin (or ``--config-file PATH``), never on the command line.
"""
