"""The LLM gateway's pure core: what a proxied request and its answer cost, and whose it is."""
