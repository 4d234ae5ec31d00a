"""The mesh: every node connected to every other, and the live node map."""
