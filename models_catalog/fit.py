"""The fit planner (models_catalog/planner.py) for the panel's rows: a catalogue file or a file on a rig's disk,
planned on a rig from its last hardware report. Pages and forms call these; the planner itself stays plain Python."""

from dataclasses import dataclass

from . import planner

# Launch flags that change rope scaling, so a slot may go past the trained context (serverspec.EXTRA_FLAGS).
ROPE_FLAGS = ("--rope-freq-scale", "--rope-freq-base")


def facts_ready(facts):
    """The header was read with what the planner needs; facts read before it lack `planner_facts`."""
    return isinstance(facts, dict) and "planner_facts" in facts


def rope_scaling(extra_flags):
    """Whether a deployment's extra flags set a rope scaling (then ctx-size may exceed the trained context)."""
    return any(isinstance(flag, str) and flag.partition("=")[0].strip() in ROPE_FLAGS for flag in extra_flags or [])


def model_size(model_file):
    """The whole model's bytes (every part of a split model), None when unknown."""
    if model_file.shards:
        sizes = [s.get("size") for s in model_file.shards]
        return sum(sizes) if all(isinstance(s, int) for s in sizes) else None
    return model_file.size


def siblings(model_file):
    """(quant, size) of the other catalogue files of the same model, for "try Q4_K_M" when this one does not fit."""
    if model_file is None:
        return []
    return [(other.file_type, model_size(other)) for other in model_file.model.files.exclude(pk=model_file.pk)
            if model_size(other) and other.file_type]


def plan_model_file(model_file, node, **flags):
    """Plan a catalogue file on a rig, before it is downloaded: its header facts (read by range requests) against
    node.hardware. `flags`: planner.plan's ctx_size, parallel, n_gpu_layers, tensor_split, cache types, flash_attn,
    rope_scaling. Raises planner.PlanRefused (HeaderNeedsReading when the header needs reading again)."""
    return planner.plan(model_file.facts, node.hardware, siblings=siblings(model_file),
                        model_bytes=model_size(model_file), this_quant=model_file.file_type, **flags)


def plan_rig_file(rig_file, node=None, **flags):
    """Plan a file on a rig's disk on that rig (or another `node`): the facts its agent read from the file, or the
    catalogue file's when the agent's were read before the planner existed."""
    node = node or rig_file.node
    model_file = rig_file.model_file
    facts = rig_file.facts
    if not facts_ready(facts) and model_file is not None and facts_ready(model_file.facts):
        facts = model_file.facts
    return planner.plan(facts, node.hardware, siblings=siblings(model_file),
                        model_bytes=rig_file.size or None,
                        this_quant=model_file.file_type if model_file else (facts or {}).get("file_type"), **flags)


@dataclass
class RigFit:
    """One rig's answer to "can it host this file, and how"."""

    node: object
    plan: object = None  # planner.Plan, or None with `refused` saying why
    refused: str = ""
    copy: object = None  # the file on this rig, when it has it

    @property
    def gpu_text(self):
        gpus = (self.node.hardware or {}).get("gpus")
        if gpus is None:
            return "not reported"
        if not gpus:
            return "no GPU"
        names = [planner.short_gpu_name(g.get("name")) for g in gpus if isinstance(g, dict)]
        if names and len(set(names)) == 1:
            return f"{len(names)}× {names[0]}"
        return ", ".join(names)


def rigs_for(model_file, nodes, ctx_size=None, parallel=None):
    """Which of these rigs can host this catalogue file, and how: one RigFit per rig, in the order given. The
    catalogue queries are made once, not once per rig."""
    copies = {c.node_id: c for c in model_file.copies.all()}
    extra = dict(siblings=siblings(model_file), model_bytes=model_size(model_file), this_quant=model_file.file_type)
    fits = []
    for node in nodes:
        row = RigFit(node=node, copy=copies.get(node.pk))
        try:
            row.plan = planner.plan(model_file.facts, node.hardware, ctx_size=ctx_size, parallel=parallel, **extra)
        except planner.PlanRefused as exc:
            row.refused = str(exc)
        fits.append(row)
    return fits
