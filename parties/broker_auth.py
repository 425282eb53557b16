"""Passwords and topic rights for the embedded amqtt broker, as Mosquitto enforces them.

The embedded broker knows the deployments it serves from the files in its
``auth_dir`` (``deployments/<name>.toml``, written by
:meth:`parties.broker.EmbeddedBroker.admit`) plus an ``admin`` hash for test
recorders. A client logs in with a party name and the password whose
Mosquitto hash is on that party's card, exactly as with the generated Mosquitto
``passwd``; anonymous clients are refused. Its topic rights are those of the
generated Mosquitto ACL (``parties.broker_config.acl_text``): read its own inbox
and every presence topic of its deployment, write the other parties' inboxes and
its own presence. ``tests/test_embedded_broker_auth.py`` checks both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from .broker_config import ADMIN_USER
from .identity import Deployment, DeploymentError, check_mosquitto_password


def may(deployment: Deployment, user: str, topic: str, write: bool) -> bool:
    """Whether ``user`` of ``deployment`` may write (or read) ``topic``: the Mosquitto ACL."""
    if user not in deployment.parties:
        return False
    parties = deployment.parties
    if write:
        return (topic == deployment.presence_topic(user)
                or any(topic == deployment.inbox_topic(p) for p in parties if p != user))
    return (topic == deployment.inbox_topic(user)
            or any(topic == deployment.presence_topic(p) for p in parties))


def _deployments(auth_dir: Path) -> list[Deployment]:
    found = []
    for path in sorted((auth_dir / "deployments").glob("*.toml")):
        try:
            found.append(Deployment.load(path))
        except (DeploymentError, OSError):
            continue  # half-written or removed: the next connection reads it again
    return found


class DeploymentAuthPlugin(BaseAuthPlugin):
    """Log in as a party of an admitted deployment (its card's password hash), or admin."""

    @dataclass
    class Config:
        auth_dir: str = ""
        allow_anonymous: bool = False  # tests that point run_parties.py at it from outside

    async def authenticate(self, *, session: Session) -> bool:
        user, password = session.username, session.password or ""
        if self.config.allow_anonymous:  # the old open broker, for tests only
            session.confidant_rights = ("admin", ())
            return True
        if not user:
            return False
        auth_dir = Path(self.config.auth_dir)
        admin = auth_dir / "admin.hash"
        if user == ADMIN_USER and admin.exists():
            ok = check_mosquitto_password(password, admin.read_text().strip())
            session.confidant_rights = ("admin", ()) if ok else None
            return ok
        # A party name can be in several deployments (one per run); it gets the rights
        # of each deployment whose card its password opens.
        deployments = tuple(d for d in _deployments(auth_dir) if user in d.parties
                            and check_mosquitto_password(password, d.parties[user].mqtt_password_hash))
        session.confidant_rights = ("party", deployments) if deployments else None
        return bool(deployments)


class DeploymentTopicPlugin(BaseTopicPlugin):
    """The Mosquitto ACL of each deployment a client logged in to."""

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        rights = getattr(session, "confidant_rights", None) if session else None
        if rights is None or not topic:
            return False
        kind, deployments = rights
        if kind == "admin":  # test recorders: every topic, like subscribing to '#'
            return True
        write = action == Action.PUBLISH
        return any(may(d, session.username, topic, write) for d in deployments)
