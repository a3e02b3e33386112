"""Semantic caching proxy (``costflux cache``; the ``costflux[cache]`` extra).

Pure rules in ``policy`` and ``usage``; I/O at the edges: ``embedder`` (numpy MiniLM),
``index`` (usearch), ``store`` (Redis), ``proxy`` (aiohttp), ``cli``.
"""
