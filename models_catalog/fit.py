"""The fit planner (models_catalog/planner.py) applied to the panel's rows: a catalogue file or a file on a rig,
planned on a rig from its last hardware report."""

from dataclasses import dataclass

from models_catalog import planner
from models_catalog.models import ModelFile

ROPE_FLAGS = ("--rope-freq-scale", "--rope-scaling", "--yarn-orig-ctx")


def has_rope_setting(extra_flags):
    """A rope setting among the extra flags lets a slot's context go past the trained context."""
    return any(str(flag).split("=", 1)[0].strip() in ROPE_FLAGS for flag in extra_flags or [])


def facts_of(rig_file):
    """The header facts for a file on a rig: its own (read on the rig), else its catalogue entry's."""
    own = rig_file.facts or {}
    if "planner_facts" in own or not rig_file.model_file_id:
        return own
    return rig_file.model_file.facts or own


def model_size(model_file):
    """The whole model's bytes (every part of a split model), None when unknown."""
    if model_file.shards:
        sizes = [s.get("size") for s in model_file.shards]
        return sum(sizes) if all(isinstance(s, int) for s in sizes) else None
    return model_file.size


def siblings(model_file):
    """(quant, size) of the catalogue's other files of the same model: a smaller one is suggested when this one
    does not fit."""
    if model_file is None:
        return []
    others = ModelFile.objects.filter(model_id=model_file.model_id).exclude(pk=model_file.pk)
    return [(other.file_type or other.quant, model_size(other)) for other in others]


def plan_file(model_file, node, **flags):
    """A catalogue file planned on a rig. Raises planner.PlanRefused (with the reason) when it cannot be."""
    return planner.plan(model_file.facts, node.hardware, siblings=siblings(model_file),
                        model_bytes=model_size(model_file), this_quant=model_file.file_type, **flags)


def plan_rig_file(rig_file, node=None, **flags):
    """A file on a rig planned on that rig."""
    catalogue = rig_file.model_file if rig_file.model_file_id else None
    return planner.plan(facts_of(rig_file), (node or rig_file.node).hardware, siblings=siblings(catalogue),
                        model_bytes=model_size(catalogue) if catalogue else rig_file.size,
                        this_quant=catalogue.file_type if catalogue else None, **flags)


@dataclass
class RigFit:
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
    """Which of these rigs can host this file, and how: one RigFit per rig, in the order given."""
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
