"""The fit planner (models_catalog/planner.py) for catalogue rows: a catalogue file or a file on a rig's disk,
planned on a rig from its hardware report. Pages and forms call these; the planner itself stays plain Python."""

from . import planner

# Launch flags that change rope scaling, so a slot may go past the trained context (serverspec.EXTRA_FLAGS).
ROPE_FLAGS = ("--rope-freq-scale", "--rope-freq-base")


def facts_ready(facts):
    """The header was read with what the planner needs; facts read before it lack `planner_facts`."""
    return isinstance(facts, dict) and "planner_facts" in facts


def rope_scaling(extra_flags):
    """Whether a deployment's extra flags set a rope scaling (then ctx-size may exceed the trained context)."""
    return any(isinstance(flag, str) and flag.partition("=")[0].strip() in ROPE_FLAGS for flag in extra_flags or [])


def siblings(model_file):
    """(quant, size) of the other catalogue files of the same model, for "try Q4_K_M" when this one does not fit."""
    return [(other.file_type, other.size) for other in model_file.model.files.exclude(pk=model_file.pk)
            if other.size and other.file_type]


def plan_model_file(model_file, node, **flags):
    """Plan a catalogue file on a rig, before it is downloaded: its header facts (read by range requests) against
    node.hardware. `flags`: planner.plan's ctx_size, parallel, n_gpu_layers, tensor_split, cache types, flash_attn,
    rope_scaling. Raises planner.PlanRefused (HeaderNeedsReading when the header needs reading again)."""
    return planner.plan(model_file.facts, node.hardware, siblings=siblings(model_file), model_bytes=model_file.size,
                        this_quant=model_file.file_type, **flags)


def plan_rig_file(rig_file, node=None, **flags):
    """Plan a file on a rig's disk on that rig (or another `node`): the facts its agent read from the file, or the
    catalogue file's when the agent's were read before the planner existed."""
    node = node or rig_file.node
    model_file = rig_file.model_file
    facts = rig_file.facts
    if not facts_ready(facts) and model_file is not None and facts_ready(model_file.facts):
        facts = model_file.facts
    return planner.plan(facts, node.hardware, siblings=siblings(model_file) if model_file else None,
                        model_bytes=rig_file.size or None,
                        this_quant=model_file.file_type if model_file else (facts or {}).get("file_type"), **flags)
