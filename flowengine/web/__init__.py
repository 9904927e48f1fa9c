"""The client web application: one page that runs the code grant per browser."""

from flowengine.web.app import create_app

__all__ = ["create_app"]
