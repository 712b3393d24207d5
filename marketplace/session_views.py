"""Sessions and earnings on a rig's proxy-router, with the restart timeline."""


def panel_context(request, node, router):
    """What the rig's Marketplace page shows of this part (templates/marketplace/_session.html)."""
    return {}
