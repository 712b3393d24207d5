"""On-chain actions through the rig's proxy-router (approve, provider, model, bids), and the market prices the
router report carries. Plain Python: `check_params` is shared with the panel, so both refuse the same values.

Every action is one transaction: its params are checked before any call (a refused value never costs gas or a
0.3 MOR bid fee), it is sent once and never retried here (a write whose answer was lost may be on chain already),
and the router's answer comes back as the operation's result: the tx hash and the ids the chain created — for a
registered model the id the router RETURNED, which differs from any id sent. Errors are masked with the rig's
secrets (cookie password, wallet key) before they leave the rig.
"""

import logging
from pathlib import Path

from .. import protocol
from ..router import client_for, managed_values, mask, secret_values
from ..routeradmin import (MODEL_MIN_STAKE, MODEL_TAGS, PROVIDER_MIN_STAKE, RouterError, endpoint, model_id,
                           price_per_second, price_summary, value_text, wei_amount)
from ..validation import InvalidValue

log = logging.getLogger("morpheus.agent")

MARKET_MODELS = 16  # models whose competing bids a report summarises (one admin API call each)
TX_TIMEOUT = 45.0  # seconds a transaction may take to be answered; under the command's soft time limit
# An answer we could not read to a write: the transaction may have gone through all the same.
UNKNOWN_KINDS = ("outcome_unknown", "malformed", "too_large")
PARAMS = {
    "approve": ({"amount"}, set()),
    "register_provider": ({"endpoint", "stake"}, set()),
    "register_model": ({"name", "stake", "tags"}, {"fee", "ipfs_id"}),
    "post_bid": ({"model_id", "price_per_second"}, set()),
    "delete_bid": ({"bid_id"}, set()),
}


def check_params(action, params):
    """The action's params as they will be sent (amounts as int wei), or InvalidValue naming the first bad one."""
    if action not in protocol.ROUTER_CHAIN_ACTIONS:
        raise InvalidValue(f"{action!r} is not an on-chain action ({', '.join(protocol.ROUTER_CHAIN_ACTIONS)})")
    required, optional = PARAMS[action]
    if not isinstance(params, dict) or not required <= set(params) or set(params) - required - optional:
        raise InvalidValue(f"{action} takes {', '.join(sorted(required | optional))}")
    if action == "approve":
        return {"amount": wei_amount(params["amount"], 1, "the allowance")}
    if action == "register_provider":
        return {"endpoint": endpoint(params["endpoint"]),
                "stake": wei_amount(params["stake"], PROVIDER_MIN_STAKE, "the provider stake")}
    if action == "register_model":
        name = params["name"]
        if not isinstance(name, str) or not 0 < len(name.strip()) <= 64 or any(c < " " for c in name):
            raise InvalidValue("the model name must be 1 to 64 printable characters")
        tags = params["tags"]
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t in MODEL_TAGS for t in tags):
            raise InvalidValue(f"tags must be one or more of {', '.join(MODEL_TAGS)}")
        clean = {"name": name.strip(), "stake": wei_amount(params["stake"], MODEL_MIN_STAKE, "the model stake"),
                 "fee": wei_amount(params.get("fee", 0), 0, "the model fee"), "tags": sorted(set(tags))}
        if params.get("ipfs_id") not in (None, ""):
            clean["ipfs_id"] = model_id(params["ipfs_id"])
        return clean
    if action == "post_bid":
        return {"model_id": model_id(params["model_id"]), "price_per_second": price_per_second(
            params["price_per_second"])}
    return {"bid_id": model_id(params["bid_id"])}


def diamond_contract(folder):
    """The spender of an approval: the marketplace contract the router itself uses (its .env), never a value sent."""
    spender = managed_values(Path(folder) / ".env").get("DIAMOND_CONTRACT_ADDRESS")
    if not spender:
        raise InvalidValue("the router's .env has no DIAMOND_CONTRACT_ADDRESS: apply its settings first")
    return spender


def send(client, folder, action, params):
    """(message, result) of one transaction; RouterError or InvalidValue when it did not go through."""
    if action == "approve":
        spender = diamond_contract(folder)
        tx = client.approve(spender, params["amount"])
        return (f"approved the marketplace contract {spender} to spend up to {value_text(params['amount'])}",
                {"tx": tx, "spender": spender, "amount": str(params["amount"])})
    if action == "register_provider":
        provider = client.register_provider(params["endpoint"], params["stake"])
        return (f"provider {provider['address']} registered at {provider['endpoint']}, stake now "
                f"{value_text(provider['stake'])}",
                {"provider": provider["address"], "endpoint": provider["endpoint"], "stake": str(provider["stake"])})
    if action == "register_model":
        kwargs = {"fee": params["fee"], "tags": params["tags"]}
        if "ipfs_id" in params:
            kwargs["ipfs_id"] = params["ipfs_id"]
        model = client.register_model(params["name"], params["stake"], **kwargs)
        returned = model_id(model["id"])  # the registry's id for it: the one a models-config entry must name
        return (f"model {model['name']!r} registered as {returned} (stake {value_text(model['stake'])}): publish a "
                "deployment with this id",
                {"model_id": returned, "name": model["name"], "stake": str(model["stake"])})
    if action == "post_bid":
        bid = client.post_bid(params["model_id"], params["price_per_second"])
        return (f"bid {bid['id']} posted on model {bid['model_id']} at {value_text(bid['price_per_second'])} per "
                "second; its 0.3 MOR fee is burnt",
                {"bid_id": model_id(bid["id"]), "model_id": model_id(bid["model_id"]),
                 "price_per_second": str(bid["price_per_second"])})
    tx = client.delete_bid(params["bid_id"])
    return f"bid {params['bid_id']} deleted", {"tx": tx, "bid_id": params["bid_id"]}


def run_action(folder, action, params, tx_timeout=TX_TIMEOUT):
    """(status, message, result) of one on-chain action: checked first, sent once, never retried."""
    hidden = secret_values(folder)
    try:
        clean = check_params(action, params)
        typed = " ".join(str(value) for value in clean.values())
        if any(secret in typed for secret in hidden):  # a chain is public and forever
            raise InvalidValue("a value holds one of the rig's secrets (wallet key, cookie password, API key)")
        client = client_for(folder, tx_timeout=tx_timeout)
        message, result = send(client, folder, action, clean)
    except InvalidValue as exc:
        return protocol.FAILED, mask(f"refused on the rig, nothing sent: {exc}", hidden)[:2000], {}
    except RouterError as exc:
        reason = mask(str(exc.reason), hidden)
        if exc.kind in UNKNOWN_KINDS:
            message = (f"{action.replace('_', ' ')}: the router's answer was lost ({exc.kind}: {reason}). It may "
                       "have happened on chain: check the provider, models and bids on this page before retrying "
                       "(a second bid burns a second fee)")
        else:
            message = f"{action.replace('_', ' ')} failed, nothing was done ({exc.kind}): {reason}"
        return protocol.FAILED, message[:2000], {"error": exc.kind}
    return protocol.SUCCEEDED, mask(message, hidden)[:2000], {k: mask(v, hidden) for k, v in result.items()}


def market(client, wallet, config_models, own_bids, own_models=()):
    """{model id: {count, lowest, median}} of the competing active bids (the provider's own left out), as wei
    strings, for the models in force, those the provider bids on and those it registered: at most MARKET_MODELS.
    A model whose bids cannot be read is left out; the rest are kept."""
    ids = []
    for candidate in ([m.get("modelId") for m in config_models if isinstance(m, dict)]
                      + [b.get("model_id") for b in own_bids] + [m.get("id") for m in own_models]):
        try:
            candidate = model_id(candidate)
        except InvalidValue:
            continue
        if candidate not in ids:
            ids.append(candidate)
    out = {}
    for candidate in ids[:MARKET_MODELS]:
        try:
            summary = price_summary(client.model_bids(candidate), exclude=wallet)
        except RouterError as exc:
            log.info("market prices for %s not read: %s", candidate, exc.kind)
            continue
        out[candidate] = {"count": summary["count"],
                          "lowest": None if summary["lowest"] is None else str(summary["lowest"]),
                          "median": None if summary["median"] is None else str(summary["median"])}
    return out


def register(agent):
    folder = Path(agent.cfg.router_dir)

    # A transaction (TX_TIMEOUT) then a fresh report (a few reads) fit well inside these; the panel allows 600 s.
    @agent.command(protocol.AGENT_ROUTER_CHAIN, soft_time_limit=240, time_limit=300)
    def router_chain(operation_id, action, params):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            status, message, result = run_action(folder, action, params)
            report = getattr(agent, "router_report", None)
            if report is not None:
                try:  # the page shows the new provider, model or bid (or the chain as it is) with the outcome
                    report(force_durable=True)
                except Exception:
                    log.exception("router report after %s failed", action)
            agent.operation(operation_id, status, message, result=result)
