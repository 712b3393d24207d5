"""On-chain actions through a rig's proxy-router, as the panel asks for them: amounts typed in MOR or wei made exact,
the same checks as the rig (nodes/agent/tasks/routerchain.py), what each action costs in words for its confirmation,
the operation sent to the rig; and the market prices a provider bids against, with the price its economics suggest.
"""

import re

from django.core import signing

from hosting import benchmarks
from hosting.economics import FLOOR_WEI_PER_SECOND, mor_text
from hosting.services import Refused
from marketplace.models import Listing, Router
from nodes.agent.router import NETWORKS
from nodes.agent.routeradmin import BID_FEE, value_text
from nodes.agent.tasks.routerchain import check_params
from nodes.agent.validation import InvalidValue
from nodes.models import Operation
from nodes.operations import start_operation

MOR = 10**18
DECIMALS = 18
UNITS = ("MOR", "wei")
WEI_RE = re.compile(r"^[0-9]{1,78}$")
MOR_RE = re.compile(r"^([0-9]{1,60})(?:\.([0-9]+))?$")
HEX_ID_RE = re.compile(r"^0x[0-9a-f]{64}$")
RECENT = 10


def parse_amount(text, unit):
    """Exact int wei from what was typed: a whole number of wei, or MOR with at most 18 decimals. Never a float."""
    text = (text or "").strip()
    if unit == "wei":
        if not WEI_RE.match(text):
            raise Refused(f"{text!r} is not a whole number of wei")
        return int(text)
    if unit != "MOR":
        raise Refused(f"the unit must be one of {', '.join(UNITS)}")
    match = MOR_RE.match(text)
    if not match:
        raise Refused(f"{text!r} is not an amount of MOR (digits, one '.', e.g. 0.2)")
    whole, decimals = match[1], match[2] or ""
    if len(decimals) > DECIMALS:
        raise Refused(f"{text} MOR has {len(decimals)} decimals: MOR has 18 (1 wei = 0.000000000000000001 MOR)")
    return int(whole) * MOR + int(decimals.ljust(DECIMALS, "0"))


def check(action, params):
    """The params as the rig will send them, or Refused with the rig's own reason (the same checks)."""
    try:
        return check_params(action, params)
    except InvalidValue as exc:
        raise Refused(str(exc)) from None


def running_router(node):
    router = Router.objects.filter(node=node).first()
    if router is None or not router.is_running:
        state = router.state if router is not None else "not set up"
        raise Refused(f"the proxy-router on {node.name} is {state}: start it first, on-chain actions go through it")
    return router


def short(value):
    return f"{value[:6]}…{value[-4:]}" if len(value) > 12 else value


def target(action, params):
    """What the operation list shows: 'post bid on 0xab12…cd34'."""
    if action == "approve":
        return f"approve {mor_text(params['amount'])} MOR"
    if action == "register_provider":
        return f"register provider {params['endpoint']}"[:200]
    if action == "register_model":
        return f"register model {params['name']}"[:200]
    if action == "post_bid":
        return f"post bid on {short(params['model_id'])}"
    return f"delete bid {short(params['bid_id'])}"


def spender(router):
    return NETWORKS[router.network]["DIAMOND_CONTRACT_ADDRESS"]


def costs(action, params, router):
    """What the action costs, in sentences for its confirmation step (exact wei alongside MOR)."""
    if action == "approve":
        return [f"Allows the Morpheus marketplace contract {spender(router)} ({router.network}) to spend up to "
                f"{value_text(params['amount'])} from the rig's wallet: the allowance granted. Nothing is spent now; "
                "stakes and bid fees are drawn from it."]
    if action == "register_provider":
        return [f"Locks {value_text(params['stake'])} from the rig's wallet as the provider stake (at least 0.2 MOR; "
                "added to any stake already locked), listing the provider at "
                f"{params['endpoint']}.", "It is one transaction: the wallet pays its gas in ETH."]
    if action == "register_model":
        return [f"Locks {value_text(params['stake'])} from the rig's wallet as the model's stake (at least 0.1 MOR); "
                f"fee {value_text(params['fee'])}, tags {', '.join(params['tags'])}.",
                "The chain gives the model its own id: the panel shows it once the rig reports it; publish a "
                "deployment with that id."]
    if action == "post_bid":
        return [f"Every bid posted burns a non-refundable {mor_text(BID_FEE)} MOR fee ({BID_FEE} wei).",
                f"Price {value_text(params['price_per_second'])} per second of session on model "
                f"{params['model_id']}.",
                "Changing a price is delete + repost: another 0.3 MOR fee. An active bid of yours on this model is "
                "replaced by this one."]
    return [f"Deletes bid {params['bid_id']}: consumers can no longer open sessions on it; only gas is spent. "
            "Posting a bid again burns another 0.3 MOR fee."]


def wire(params):
    """Params as they travel to the rig: amounts as integer strings (JSON has no big ints, never floats)."""
    return {key: str(value) if isinstance(value, int) else value for key, value in params.items()}


CONFIRM_SALT = "marketplace.chain.confirm"
CONFIRM_MAX_AGE = 15 * 60  # seconds a confirmation page stays good for


def _confirmed_what(node, user, action, params):
    return {"rig": node.pk, "user": user.pk, "action": action, "params": wire(params)}


def confirmation(node, user, action, params):
    """The token the confirmation page carries: it stands for exactly this action with these values, by this user on
    this rig, for CONFIRM_MAX_AGE. Only a POST carrying it sends the action, so nothing reaches the chain without its
    costs having been shown."""
    return signing.dumps(_confirmed_what(node, user, action, params), salt=CONFIRM_SALT, compress=True)


def is_confirmed(token, node, user, action, params):
    try:
        shown = signing.loads(token or "", salt=CONFIRM_SALT, max_age=CONFIRM_MAX_AGE)
    except signing.BadSignature:  # also an expired one (SignatureExpired)
        return False
    return shown == _confirmed_what(node, user, action, params)


def start(node, user, action, params):
    """The operation that sends this action to the rig, after the same checks the rig makes."""
    running_router(node)
    clean = check(action, params)
    return start_operation(node, Operation.ROUTER_CHAIN, user, target=target(action, clean),
                           payload={"action": action, "params": wire(clean)})


def recent(node):
    """The rig's latest on-chain operations; a registered model's id only when it is one (the rig may be hostile)."""
    rows = []
    for op in Operation.objects.filter(node=node, kind=Operation.ROUTER_CHAIN).order_by("-pk")[:RECENT]:
        returned = (op.result or {}).get("model_id") if op.status == Operation.SUCCEEDED else None
        model_id = returned.lower() if isinstance(returned, str) and HEX_ID_RE.match(returned.lower()) else None
        rows.append({"op": op, "model_id": model_id if op.target.startswith("register model") else None})
    return rows


# --- prices --------------------------------------------------------------------------------------------------------
def suggested_bid(node, model_id):
    """(wei per second, where it comes from): the economics of the deployment whose Listing serves this model on
    this rig, from its latest benchmark; the floor when there is none. Never below the floor."""
    listing = (Listing.objects.select_related("deployment").filter(deployment__node=node, model_id=model_id)
               .first())
    if listing is None:
        return FLOOR_WEI_PER_SECOND, "the marketplace floor (no deployment on this rig serves this model)"
    deployment = listing.deployment
    latest = deployment.benchmarks.select_related("node__profile").first()
    if latest is None:
        return FLOOR_WEI_PER_SECOND, f"the marketplace floor ({deployment.name} has no benchmark yet)"
    economics = benchmarks.economics_of(latest)
    if "missing" in economics:
        return FLOOR_WEI_PER_SECOND, f"the marketplace floor ({deployment.name}: {economics['missing']})"
    wei = max(economics["costs"].bid_wei_per_second, FLOOR_WEI_PER_SECOND)
    return wei, f"the economics of {deployment.name} (latest benchmark, the panel's prices)"


def compare(price, summary, whose="yours"):
    """'lowest 0.000012 MOR/s, median 0.000015 MOR/s of 5 bids: yours is below the median'."""
    if not summary or not summary.get("count"):
        return "no competing bid on this model"
    lowest, median, count = int(summary["lowest"]), int(summary["median"]), summary["count"]
    said = (f"lowest {mor_text(lowest)} MOR/s, median {mor_text(median)} MOR/s of {count} competing "
            f"bid{'s' if count != 1 else ''}")
    if price is None:
        return said
    if price < lowest:
        where = "below the lowest"
    elif price < median:
        where = "below the median"
    elif price == median:
        where = "at the median"
    else:
        where = "above the median"
    where = f"{whose} is {where}"
    return f"{said}: {where}"


def known_models(node, snapshot):
    """{model id: name} the provider can bid on from this rig: its registered models, its Listings, the models in
    force and those its bids and the market report name."""
    names = {}
    for m in snapshot.get("models") or []:
        names.setdefault(m["id"], m.get("name") or "")
    for listing in Listing.objects.filter(deployment__node=node).select_related("deployment"):
        names.setdefault(listing.model_id.lower(), f"{listing.model_name} ({listing.deployment.name})")
    for m in snapshot.get("config_models") or []:
        if isinstance(m, dict) and isinstance(m.get("modelId"), str) and HEX_ID_RE.match(m["modelId"].lower()):
            names.setdefault(m["modelId"].lower(), str(m.get("modelName") or ""))
    for model_id in [b["model_id"] for b in snapshot.get("bids") or []] + list(snapshot.get("market") or {}):
        names.setdefault(model_id, "")
    return names


def market_rows(node, snapshot):
    """One row per model the provider may bid on: its own bid, the suggested price and the competing bids."""
    own = {b["model_id"]: b for b in snapshot.get("bids") or []}
    market = snapshot.get("market") or {}
    rows = []
    for model_id, name in known_models(node, snapshot).items():
        suggested, source = suggested_bid(node, model_id)
        bid = own.get(model_id)
        summary = market.get(model_id)
        rows.append({"model_id": model_id, "name": name, "bid": bid, "suggested": suggested, "source": source,
                     "summary": summary,
                     "sentence": compare(int(bid["price_per_second"]) if bid else suggested, summary,
                                         "yours" if bid else "the suggested price")})
    return rows
