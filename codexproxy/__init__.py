"""codexproxy: a local gateway for Codex/ChatGPT account pools."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("codexproxy")
