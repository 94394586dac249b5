"""The gateway process: HTTP routes, forwarding, and the supervisor of the model servers."""

from .core import FlaskGateway, GatewayStartupError

__all__ = ["FlaskGateway", "GatewayStartupError"]
