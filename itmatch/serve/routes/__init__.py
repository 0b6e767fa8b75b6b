"""The service's endpoints, one router per concern; ``serve.app.create_app`` includes them. Each module's
``router(service)`` builds its endpoints over the shared ``serve.service.Service`` (the limits shape their
parameters, so the routes are made per app)."""
