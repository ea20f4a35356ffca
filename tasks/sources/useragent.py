"""The User-Agent check: Wikimedia (and polite crawling) require a descriptive agent with a contact.

https://foundation.wikimedia.org/wiki/Policy:Wikimedia_Foundation_User-Agent_Policy asks for
"<client name>/<version> (<contact information>)" where the contact is an e-mail address or a URL.
"""

from __future__ import annotations

import re

from tinyllama_model.errors import ConfigError

_CONTACT = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|https?://\S+")
EXAMPLE = "tinyllama-pipeline/0.1 (https://example.org/you; you@example.org)"


def require_user_agent(user_agent: str | None, needed_by: str) -> str:
    """Return the agent if it names a client and a contact; otherwise a ConfigError saying how to set it."""
    how = f'set collect.user_agent, e.g. --set collect.user_agent="{EXAMPLE}"'
    if not user_agent or not user_agent.strip():
        raise ConfigError(
            f"{needed_by} needs a descriptive User-Agent with a contact (Wikimedia policy); {how}"
        )
    agent = user_agent.strip()
    if not _CONTACT.search(agent) or len(agent.split("/")[0].strip()) < 3:
        raise ConfigError(
            f"collect.user_agent={agent!r} must name the client and a contact (an e-mail address or a "
            f"URL), as the Wikimedia User-Agent policy requires; {how}"
        )
    return agent
