"""Demo authorization server and protected resource for the code grant.

They are peers for the client's tests and a first thing to run for new
users. The default issuer, http://localhost:9001, expects the authorization
server on port 9001. Both apps share one `DemoDatabase`, so they must run in
one process.
"""

from flowengine.demo.authserver import DemoSettings, create_authorization_server
from flowengine.demo.resource import create_resource_server
from flowengine.demo.store import DemoDatabase

__all__ = [
    "DemoDatabase",
    "DemoSettings",
    "create_authorization_server",
    "create_resource_server",
]
