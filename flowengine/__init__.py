"""flowengine: an OAuth 2.0 client whose code grant is an auditable state machine.

The grant is the transition table in flows/authorization_code.yaml, run on
the `transitions` library. `OAuthClient` drives it with an HTTP adapter and a
store; every transition is saved with an audit event.
"""

from __future__ import annotations

import logging

from flowengine.client import FlowStatus, OAuthClient
from flowengine.definition import (
    FlowDefinition,
    Registry,
    dump_definition,
    load_definition,
    parse_definition,
)
from flowengine.engine import Engine, FireResult, Run
from flowengine.errors import (
    ConfigError,
    ConflictError,
    DefinitionError,
    FlowEngineError,
    FlowNotFoundError,
    InvalidTriggerError,
    IssuerMismatchError,
    LocalError,
    OAuthError,
    ProtocolError,
    RefreshTimeoutError,
    RemoteError,
    ResourceError,
    StateMismatchError,
    StoreUnavailableError,
    TokenExpiredError,
    TransitionError,
    TransportError,
)
from flowengine.flow import Flow, open_flow
from flowengine.grant import REGISTRY
from flowengine.oauth.config import ClientConfig, load_config
from flowengine.records import AuditEvent, FlowRecord

__all__ = [
    "REGISTRY",
    "AuditEvent",
    "ClientConfig",
    "ConfigError",
    "ConflictError",
    "DefinitionError",
    "Engine",
    "FireResult",
    "Flow",
    "FlowDefinition",
    "FlowEngineError",
    "FlowNotFoundError",
    "FlowRecord",
    "FlowStatus",
    "InvalidTriggerError",
    "IssuerMismatchError",
    "LocalError",
    "OAuthClient",
    "OAuthError",
    "ProtocolError",
    "RefreshTimeoutError",
    "Registry",
    "RemoteError",
    "ResourceError",
    "Run",
    "StateMismatchError",
    "StoreUnavailableError",
    "TokenExpiredError",
    "TransitionError",
    "TransportError",
    "dump_definition",
    "load_config",
    "load_definition",
    "open_flow",
    "parse_definition",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
