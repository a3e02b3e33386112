"""Slack messages for alert events: Block Kit, with every label value escaped.

Slack reads ``<...>`` in mrkdwn as a link or a mention, so a team named ``<!channel>`` would
page a whole channel: ``&``, ``<`` and ``>`` are escaped in every text that comes from data
(Slack's documented escaping).
"""

from __future__ import annotations

from typing import Any

from costflux.schemas.alert import AlertEvent

__all__ = ["escape_mrkdwn", "slack_message"]

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ICONS = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}


def escape_mrkdwn(text: str) -> str:
    """
    >>> escape_mrkdwn("<!channel> & <https://x|y>")
    '&lt;!channel&gt; &amp; &lt;https://x|y&gt;'
    """
    return text.translate(_ESCAPES)


def slack_message(alert: AlertEvent) -> dict[str, Any]:
    """The webhook payload: a plain-text fallback and the Block Kit blocks."""
    state = "RESOLVED" if alert.state == "resolved" else "FIRING"
    if alert.repeat:
        state += f" (reminder {alert.repeat})"
    title = f"{state}: {alert.rule} ({alert.severity})"
    window = f"since {alert.starts_at.isoformat()}"
    if alert.ends_at is not None:
        window = f"{alert.starts_at.isoformat()} to {alert.ends_at.isoformat()}"
    labels = ", ".join(f"{escape_mrkdwn(k)}=`{escape_mrkdwn(v)}`"
                       for k, v in sorted(alert.labels.items())) or "(all)"
    fields = [
        ("Severity", alert.severity),
        ("Value", f"{alert.value:g} (threshold {alert.threshold:g})"),
        ("Window", window),
        ("Alert", alert.alert_id),
    ]
    return {
        "text": escape_mrkdwn(f"{title}: {alert.summary}"),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section",
             "text": {"type": "mrkdwn",
                      "text": f"{_ICONS[alert.state]} {escape_mrkdwn(alert.summary)}"},
             "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{escape_mrkdwn(value)}"}
                        for name, value in fields]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Labels: {labels}"}]},
        ],
    }
