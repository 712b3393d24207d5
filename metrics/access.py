"""Who may scrape /metrics: a bearer token, or a client network allowed without one. Plain Python (settings read it)."""

import hmac
import ipaddress

MIN_TOKEN_LENGTH = 16
HOW_TO = ("Set MORPHEUS_METRICS_TOKEN (16+ characters; Prometheus sends it as `authorization: {type: Bearer, "
          "credentials: ...}`) or MORPHEUS_METRICS_ALLOW (client networks as CIDRs, e.g. 10.0.0.0/8) on the panel.")


class AccessConfigError(ValueError):
    pass


def parse_token(raw, name="MORPHEUS_METRICS_TOKEN"):
    token = (raw or "").strip()
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise AccessConfigError(f"{name} is shorter than {MIN_TOKEN_LENGTH} characters: use a random one, e.g. "
                                "python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    return token


def parse_networks(items, name="MORPHEUS_METRICS_ALLOW"):
    """CIDRs (or single addresses) → networks; a network with host bits set is refused (10.0.0.1/8 is a typo)."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise AccessConfigError(f"{name}: {item!r} is not a network ({exc})") from None
    return networks


def address_allowed(address, networks):
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def decide(authorization, address, token, networks):
    """(HTTP status, reason) for a scrape: 200 when allowed. A token that is presented must be right, even from an
    allowed network; none presented is fine from an allowed network."""
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if authorization:
        if scheme.lower() != "bearer" or not given:
            return 401, "Send the token as 'Authorization: Bearer <token>'."
        if not token:
            return 401, "A token was sent, but the panel has none set (MORPHEUS_METRICS_TOKEN)."
        if hmac.compare_digest(given.encode(), token.encode()):
            return 200, ""
        return 401, "Wrong token."
    if address_allowed(address, networks):
        return 200, ""
    if token:
        return 401, "A bearer token is required."
    if networks:
        return 403, f"{address} is not in MORPHEUS_METRICS_ALLOW."
    return 403, "Scraping is not configured. " + HOW_TO
