"""The web console (``/ui`` on a node's and a router's HTTP port, docs/console.md): registry
browser, freshness per view, answer-quality and latency charts from a short in-memory history,
a try-it panel, the router's cluster page and the admin panel.

``routes`` holds the handlers, ``data`` what they answer (cut to the caller's scope),
``history`` the sampler, ``svg`` the charts, ``snippets`` the try-it panel's code, and
``static/`` the page (plain JavaScript and CSS, no library, nothing fetched from elsewhere).
"""

from serving.frontend.console.routes import Console, NodeFacts, RouterFacts

__all__ = ["Console", "NodeFacts", "RouterFacts"]
