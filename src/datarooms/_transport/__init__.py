"""Private transport: the HTTP client every part of datarooms uses to reach a homeserver."""
