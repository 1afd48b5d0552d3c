"""What a grafted model holds: total / trainable / frozen parameters and each graft with its location."""

from __future__ import annotations

from dataclasses import dataclass

from attngraft.grafting.model import GraftedModel


@dataclass(frozen=True)
class GraftRow:
    """One graft of the summary: mode, block, location, the map it sees and its parameter count."""

    mode: str
    block: str
    location: str
    detail: str
    params: int


@dataclass(frozen=True)
class GraftSummary:
    """Parameter counts of a grafted model and its grafts (counts exclude modules a head dropped)."""

    name: str
    weights: str
    in_chans: int
    image_size: int
    total: int
    trainable: int
    frozen_norms: int
    grafts: tuple[GraftRow, ...]
    notes: tuple[str, ...]

    @property
    def frozen(self) -> int:
        """Parameters that do not train."""
        return self.total - self.trainable

    def lines(self) -> list[str]:
        """The summary as printed by ``attngraft graft-info``."""
        share = 100 * self.trainable / max(self.total, 1)
        lines = [
            f"backbone     {self.name} (weights: {self.weights})",
            f"input        {self.in_chans}x{self.image_size}x{self.image_size}",
            f"parameters   total {self.total:,}  trainable {self.trainable:,} ({share:.1f}%)  frozen {self.frozen:,}",
            f"frozen BN    {self.frozen_norms} BatchNorm layers kept in eval mode",
            "",
            f"{'mode':<9}{'block':<12}{'location':<22}{'params':>12}  map / detail",
        ]
        lines += [
            f"{row.mode:<9}{row.block:<12}{row.location:<22}{row.params:>12,}  {row.detail}" for row in self.grafts
        ]
        return [*lines, "", *(f"note: {note}" for note in self.notes)] if self.notes else lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def summarize(model: GraftedModel) -> GraftSummary:
    """Counts the parameters of ``model`` and of each of its grafts."""
    parameters = list(model.parameters())
    rows = tuple(
        GraftRow(
            record.mode,
            record.block,
            record.location,
            record.detail,
            sum(parameter.numel() for name in record.modules for parameter in model.get_submodule(name).parameters()),
        )
        for record in model.records
    )
    replaced = {name.removeprefix("backbone.") for record in model.records for name in record.modules}
    for name in (name for name in model.new_modules if name not in replaced):
        module = model.backbone.get_submodule(name)
        detail = f"{type(module).__name__}, freshly initialised: trains"
        rows += (GraftRow("new", "classifier", name, detail, sum(p.numel() for p in module.parameters())),)
    return GraftSummary(
        name=model.name,
        weights=model.weights,
        in_chans=model.in_chans,
        image_size=model.image_size,
        total=sum(parameter.numel() for parameter in parameters),
        trainable=sum(parameter.numel() for parameter in parameters if parameter.requires_grad),
        frozen_norms=len(model.frozen_norms),
        grafts=rows,
        notes=tuple(model.notes),
    )
