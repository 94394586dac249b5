"""Remote endpoints: model servers the gateway did not start, reached over HTTP (``URLS``)."""
