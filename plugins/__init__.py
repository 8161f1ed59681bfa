"""The built-in codexproxy plugins: one module per concern, on the hooks of codexproxy.hookspecs."""
