"""The public HTTP transport: one ``twisted.web`` Site for every route."""
