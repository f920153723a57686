"""HTML pages and the helpers only pages use."""
