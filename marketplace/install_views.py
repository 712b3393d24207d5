"""Installing a proxy-router release on a rig from its URL and sha256."""


def panel_context(request, node, router):
    """What the rig's Marketplace page shows of this part (templates/marketplace/_install.html)."""
    return {}
