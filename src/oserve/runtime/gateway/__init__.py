"""The OpenAI-compatible HTTP gateway: routes (app), request schemas (schemas), error mapping (error_map)."""
