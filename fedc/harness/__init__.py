"""Client bundles: jinja2 rendering of browser, Node and Python clients from a manifest."""
