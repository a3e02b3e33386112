"""The pure core: money, pricing, event decoding, windows, aggregation, allocation.

Nothing here imports Kafka, Faust, Redis, Prometheus or NVML, and nothing reads the
environment or the clock: callers pass ``now`` in. ``streams`` and ``agents`` import this
package; it imports neither.
"""
