"""The proxy-router on this rig (nodes/agent/router.py): apply the panel's config, supervise it, report its state.

The panel sends the managed settings only. The router's .env keeps every key the provider wrote (WALLET_PRIVATE_KEY,
an RPC URL with its key) and none of their values leave the rig: reports carry the NAMES of those keys, log lines
and messages are masked, and the admin API is called on loopback with the router's own cookie.
"""

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from .. import protocol, routermodels
from ..router import (DEGRADED, HEALTHY, RouterError, RouterProcess, client_for, default_env, mask, secret_values,
                      unmanaged_keys, write_env, write_models_config)
from ..routersessions import sessions_fields
from ..supervisor import write_private
from ..validation import InvalidValue
from .routerchain import market

log = logging.getLogger("morpheus.agent")
HEALTH_WAIT = 45.0  # seconds an apply waits for /healthcheck before it reports the state it has


def check_config(config):
    """The panel's config as the rig will apply it, or InvalidValue (nothing written)."""
    if not isinstance(config, dict) or set(config) - set(protocol.ROUTER_CONFIG_KEYS):
        raise InvalidValue(f"config must be an object with {', '.join(protocol.ROUTER_CONFIG_KEYS)}")
    network = config.get("network")
    if network not in protocol.ROUTER_NETWORKS:
        raise InvalidValue(f"network must be one of {', '.join(protocol.ROUTER_NETWORKS)}, not {network!r}")
    binary = config.get("binary")
    if not isinstance(binary, str) or not binary.startswith("/") or len(binary) > 4096 or "\x00" in binary:
        raise InvalidValue("binary must be the absolute path of the proxy-router on the rig")
    env = config.get("env") or {}
    models = config.get("models") or []
    if not isinstance(env, dict) or not isinstance(models, list):
        raise InvalidValue("env must be an object and models a list")
    return {"network": network, "binary": binary, "env": dict(env), "models": models}


class Unapplied(Exception):
    """The change was not applied and nothing was written: why, in words for the provider."""


def fingerprint(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def register(agent):
    folder = Path(agent.cfg.router_dir)
    config_path = agent.cfg.state_dir / "router" / "applied.json"
    holder = {"process": None, "config": None, "last": None, "sent_at": 0.0, "reload": None}
    lock = threading.RLock()
    stop = threading.Event()

    def load_applied():
        try:
            data = json.loads(config_path.read_text())
            return data if isinstance(data, dict) and "config" in data else None
        except (OSError, ValueError):
            return None

    def process_for(config):
        proc = holder["process"]
        if proc is None or proc.argv != [config["binary"]]:
            if proc is not None and proc.is_running():  # another binary (a new release): the old one lets go first
                proc.stop(f"replaced by {config['binary']}")
            proc = RouterProcess([config["binary"]], folder, agent.cfg.state_dir,
                                 on_exit=lambda event: log.warning("proxy-router exited: %s", event.get("exit")))
            holder["process"] = proc
        return proc

    def snapshot():
        """The router's state for the panel (protocol.ROUTER_FIELDS)."""
        proc = holder["process"]
        base = proc.report() if proc is not None else {"state": "stopped", "pid": None, "message": "", "log": "",
                                                          "restarts": 0, "version": None, "models": {}}
        return router_state(folder, base, holder["config"] or {}, holder, agent.clock())

    def publish(force_durable=False):
        with lock:
            report = snapshot()
            state = (report["state"], report["pid"], report["restarts"], report["health"],
                     (report["error"] or {}).get("kind"))
            changed = state != holder["last"]
            holder["last"], holder["sent_at"] = state, time.monotonic()
        agent.send(protocol.ROUTER, report, durable=changed or force_durable,
                   expires=None if changed or force_durable else max(60.0, 2 * agent.cfg.inventory_interval))
        return report

    agent.router_report = publish  # on-chain actions (tasks/routerchain.py) report the new state at once

    def watch():
        """Supervision (restarts with backoff) and the periodic report while a router is configured."""
        interval = min(agent.cfg.inventory_interval, 30.0)
        while not stop.wait(1.0):
            proc = holder["process"]
            if proc is None:
                continue
            try:
                with lock:
                    proc.tick()
                    state = (proc.state, proc.pid if proc.is_running() else None, proc.restarts)
                    moved = holder["last"] is None or state != holder["last"][:3]
                if moved or time.monotonic() - holder["sent_at"] >= interval:
                    publish()
            except Exception:
                log.exception("proxy-router watch step failed")

    def on_connect():
        applied = load_applied()
        if applied is not None:
            with lock:
                holder["config"] = applied["config"]
                proc = process_for(applied["config"])
                if not proc.adopt() and proc.desired == "running":
                    proc.start()
            publish(force_durable=True)
        threading.Thread(target=watch, name="proxy-router-watch", daemon=True).start()

    agent.on_first_connect.append(on_connect)

    @agent.command(protocol.AGENT_ROUTER_APPLY)
    def router_apply(operation_id, config, restart=False, reload_only=False):
        with agent.claimed(operation_id) as mine:
            if mine:
                apply(operation_id, config, restart is True, reload_only is True)

    def apply(operation_id, config, restart, reload_only=False):
        """Write the settings and models-config.json, then start the router, or restart it when they changed. A change
        to the models alone is reloaded without a restart where the router can; with `reload_only` (the provider was
        not asked about cutting sessions) nothing is changed when only a restart would apply it."""
        reloaded, restarted, why_restart = None, False, "its settings changed"
        try:
            clean = check_config(config)
            managed = {**default_env(clean["network"]), **clean["env"]}
            models_path = folder / managed.get("MODELS_CONFIG_PATH", "models-config.json")
            folder.mkdir(parents=True, exist_ok=True)
            config_path.parent.mkdir(parents=True, exist_ok=True)
            with lock:
                applied = load_applied()
                old = applied["config"] if applied else None
                changed = applied is None or applied.get("fingerprint") != fingerprint(clean)
                running = holder["process"] is not None and holder["process"].is_running()
                reload = running and not restart and routermodels.models_only(old, clean)
                if reload_only and running and (restart or (changed and not reload)):
                    raise Unapplied("this change needs a restart of the proxy-router, which cuts its open sessions; "
                                    "nothing was changed: apply it from the panel with the restart confirmed")
                write_env(folder / ".env", managed)
                write_models_config(models_path, clean["models"])
                proc = process_for(clean)
                if reload:
                    outcome, answer = routermodels.reload_models(client_for(folder))
                    holder["reload"] = {"version": (proc.health or {}).get("version"),
                                        "supported": outcome != "unsupported"}
                    if outcome == "reloaded":
                        reloaded = answer
                    elif reload_only:
                        write_models_config(models_path, old["models"])  # what the router runs with, as it was
                        raise Unapplied(f"the proxy-router did not reload its models ({answer}); nothing was changed")
                    else:
                        why_restart = f"its models changed and it could not reload them ({answer})"
                write_private(config_path, json.dumps({"config": clean, "fingerprint": fingerprint(clean)}))
                holder["config"] = clean
                if reloaded is not None:
                    pass
                elif proc.is_running() and (changed or restart):
                    restarted = True
                    proc.restart("restarted by the panel: " + ("asked to" if restart else why_restart))
                elif not proc.is_running():
                    proc.start()
        except (InvalidValue, ValueError, OSError, Unapplied) as exc:
            why = mask(str(exc), secret_values(folder))
            if isinstance(exc, Unapplied):
                publish(force_durable=True)  # the panel learns whether this router reloads
            agent.operation(operation_id, protocol.FAILED, f"refused on the rig: {why}")
            return
        state = proc.wait_healthy(timeout=HEALTH_WAIT, interval=0.2) if proc.state != HEALTHY else proc.state
        report = publish(force_durable=True)
        message = mask(proc.message, secret_values(folder)) or state
        if state in (HEALTHY, DEGRADED):
            unchanged = "" if changed or restart else "unchanged; "
            version = report["version"] or "unknown"
            if reloaded is not None:
                unchanged = (f"reloaded its models without a restart (added {len(reloaded['added'])}, removed "
                             f"{len(reloaded['removed'])}); ")
            elif restarted:
                unchanged = f"restarted ({'asked to' if restart else why_restart}); "
            agent.operation(operation_id, protocol.SUCCEEDED,
                            f"proxy-router {unchanged}{state}, version {version}, pid {proc.pid}",
                            result={"state": state, "pid": proc.pid, "reloaded": reloaded is not None})
        else:
            agent.operation(operation_id, protocol.FAILED, f"proxy-router {state}: {message}"[:2000])

    @agent.command(protocol.AGENT_ROUTER_REFRESH)
    def router_refresh(operation_id):
        with agent.claimed(operation_id) as mine:
            if mine:
                report = publish(force_durable=True)
                why = f"; admin API: {report['error']['reason']}" if report["error"] else ""
                agent.operation(operation_id, protocol.SUCCEEDED, f"proxy-router {report['state']}{why}")


def router_state(folder, base, config, holder, now):
    """The `router` report (protocol.ROUTER_FIELDS) of the router in `folder` whose RouterProcess.report() is `base`,
    applied with `config`: its admin API is read (on loopback, with its cookie) only while it is up. `holder` keeps
    what lasts between reports (the reload support seen, the claims cursor)."""
    hidden = secret_values(folder)
    published = routermodels.report_fields(folder, holder.get("reload"), base.get("version"))
    out = {**published, "state": base["state"], "pid": base["pid"], "message": base["message"],
           "log": base["log"], "restarts": base["restarts"], "version": base.get("version"), "health": None,
           "models_health": base.get("models") or {}, "wallet": None, "mor_wei": None, "eth_wei": None,
           "provider": None, "models": [], "bids": [], "open_sessions": None,
           "config_models": routermodels.reported_models(config.get("models")),
           "unmanaged_keys": unmanaged_keys(folder / ".env"),
           "network": config.get("network"), "binary": config.get("binary"), "at": now, "error": None}
    out.update(sessions_fields(lambda: client_for(folder), base, holder))
    if base["state"] not in (HEALTHY, DEGRADED):
        return out
    try:
        client = client_for(folder)
        health = client.healthcheck()
        out["health"], out["version"] = health["status"], health["version"] or out["version"]
        out["models_health"] = health["models"]
        wallet = out["wallet"] = client.wallet()
        balance = client.balance()
        out["mor_wei"], out["eth_wei"] = str(balance["mor"]), str(balance["eth"])
        mine = [p for p in client.providers() if str(p["address"]).lower() == wallet.lower()]
        if mine:
            out["provider"] = {**mine[0], "stake": str(mine[0]["stake"])}
        out["models"] = [{"id": m["id"], "name": m["name"], "stake": str(m["stake"])} for m in client.models()
                         if str(m.get("owner") or "").lower() == wallet.lower()][:64]
        out["bids"] = [{"id": b["id"], "model_id": b["model_id"], "price_per_second": str(b["price_per_second"])}
                       for b in client.provider_bids(wallet)][:64]
        out["market"] = market(client, wallet, out["config_models"], out["bids"], out["models"])
        if out["open_sessions"] is None:  # the sessions read above failed: read them here, where a failure shows
            out["open_sessions"] = sum(1 for s in client.provider_sessions(wallet, order="desc") if s["open"])
    except RouterError as exc:
        out["error"] = {"kind": exc.kind, "reason": mask(str(exc.reason), hidden)[:500]}
    except InvalidValue as exc:
        out["error"] = {"kind": "invalid", "reason": mask(str(exc), hidden)[:500]}
    return out
