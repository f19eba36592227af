"""Front ends beside the page: the OpenAI-compatible API."""
