"""Baseline 'faust': a bare Faust agent that JSON-decodes and sums cost per message, no table.

Run by bench/run.py as ``python bench/faust_agent.py worker -l info``; settings come from
BENCH_* variables because Faust's command line owns argv.
"""

from __future__ import annotations

import faust
import orjson
from child import Progress, env
from workload import PRICES_PICO

progress = Progress(int(env("EVENTS")), env("REPORT"))

app = faust.App(
    env("GROUP"),
    broker="kafka://" + env("BOOTSTRAP"),
    store="memory://",
    datadir=env("DATADIR"),
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=int(env("WEB_PORT")),
    # As costflux.streams.kafka.faust_broker_options: a ~3 s group join on Tansu instead of ~30 s.
    broker_session_timeout=6,
    broker_rebalance_timeout=6,
    broker_heartbeat_interval=1,
    consumer_auto_offset_reset="earliest",
)

usage = app.topic(
    env("TOPIC"), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)


@app.agent(usage)
async def tally(stream: faust.StreamT[bytes]) -> None:
    prices = PRICES_PICO
    async for value in stream:
        progress.first()
        document = orjson.loads(value)
        for event in document if type(document) is list else (document,):
            price_in, price_out = prices[event["model"]]
            progress.cost_pico += (
                event["input_tokens"] * price_in + event["output_tokens"] * price_out
            )
            progress.seen += 1
        progress.check_done()


if __name__ == "__main__":
    app.main()
