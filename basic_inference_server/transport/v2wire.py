"""What the Open Inference Protocol (KServe V2) puts on the wire, without numpy: the gateway, which
never decodes tensors, reads only these (:mod:`.v2codec` turns tensors to numpy and back)."""

from __future__ import annotations

HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON's size, when binary tensors follow it
BINARY_CONTENT_TYPE = "application/octet-stream"
# The protocol's datatypes that travel here (BF16 has no numpy dtype).
DATATYPE_NAMES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                  "FP16", "FP32", "FP64", "BYTES")
