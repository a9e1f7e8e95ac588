"""API keys at the gateway's front door: the key list format, the key store, limits and usage."""
