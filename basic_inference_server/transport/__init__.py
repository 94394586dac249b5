"""Transport pieces shared by the gateway and the model servers: the internal frame channel."""
