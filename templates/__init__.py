"""Jinja2 templates of the status page (a package only so that they ship inside the wheel)."""
