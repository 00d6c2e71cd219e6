"""Homeserver management (the embedded Synapse, admin calls) and the Matrix HTTP API client
services and the CLI use (:mod:`datarooms.homeserver.api`)."""
