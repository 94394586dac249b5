"""The request path: routing by SIGNATURE, admission, the internal channel and HTTP hop to the
model servers, and the answer envelope (the hot path is :mod:`.runpath`)."""
