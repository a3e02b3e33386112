"""Adapters that publish usage events from other tools: each imports its tool, so import the
one you use (``costflux.integrations.litellm`` needs the ``litellm`` extra)."""
