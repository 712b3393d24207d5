"""On-chain actions through the rig's proxy-router: approve, provider, model, bids (each a confirmed operation)."""


def panel_context(request, node, router):
    """What the rig's Marketplace page shows of this part (templates/marketplace/_chain.html)."""
    return {}
