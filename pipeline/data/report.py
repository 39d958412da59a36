"""Per-dataset counts of a manifest build, printed and saved like the paper's Table 2
(samples per dataset in each subset), plus what was rejected and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DatasetCounts:
    name: str
    stage: str
    template: str
    in_subset: dict[str, int]  # subset -> samples with embedded_len <= its limit
    records: int = 0  # elements of the JSON array
    valid: int = 0  # rows in the manifest
    too_long: int = 0  # valid but over every subset's limit (kept as rows, in no subset)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> records

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


@dataclass
class BuildReport:
    subsets: dict[str, int]
    num_vision_tokens: int
    datasets: list[DatasetCounts] = field(default_factory=list)

    def add(self, c: DatasetCounts) -> DatasetCounts:
        self.datasets.append(c)
        return c

    def total(self) -> DatasetCounts:
        t = DatasetCounts("total", "", "", {s: 0 for s in self.subsets})
        for c in self.datasets:
            t.records, t.valid, t.too_long = t.records + c.records, t.valid + c.valid, t.too_long + c.too_long
            for s, n in c.in_subset.items():
                t.in_subset[s] += n
            for r, n in c.rejected.items():
                t.rejected[r] = t.rejected.get(r, 0) + n
        return t

    def markdown(self) -> str:
        subs = list(self.subsets)
        head = ["dataset", "stage", "template", "records", "valid"]
        head += [f"{s} (≤{self.subsets[s]})" for s in subs] + ["over every limit", "rejected"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in self.datasets + [self.total()]:
            row = [c.name, c.stage, c.template, c.records, c.valid] + [c.in_subset[s] for s in subs]
            lines.append("| " + " | ".join(str(x) for x in row + [c.too_long, c.n_rejected]) + " |")
        out = [f"Embedded length = text tokens + {self.num_vision_tokens} vision tokens; a sample is in a "
               "subset iff its embedded length is within the limit (never truncated).", "", *lines]
        reasons = sorted({r for c in self.datasets for r in c.rejected})
        if reasons:
            out += ["", "Rejected records by reason:", "",
                    "| dataset | " + " | ".join(reasons) + " |", "|" + "---|" * (len(reasons) + 1)]
            for c in self.datasets:
                out.append(f"| {c.name} | " + " | ".join(str(c.rejected.get(r, 0)) for r in reasons) + " |")
        return "\n".join(out) + "\n"

    def to_json(self) -> dict:
        rows = [dict(asdict(c), n_rejected=c.n_rejected) for c in self.datasets]
        t = self.total()
        return {"subsets": self.subsets, "num_vision_tokens": self.num_vision_tokens, "datasets": rows,
                "total": dict(asdict(t), n_rejected=t.n_rejected)}
