"""Lint findings and the report that collects them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import DeployCheckError

ERROR, WARNING = "error", "warning"


class LintError(DeployCheckError):
    """The ONNX graph breaks a TensorRT requirement (raised by builds; the lint itself reports)."""


@lru_cache(maxsize=1)
def trt_op_table() -> dict[str, Any]:
    """The onnx-tensorrt operator table and opset range shipped in ``trt_ops.json``."""
    return json.loads((Path(__file__).with_name("trt_ops.json")).read_text())


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    check: str
    node: str  # node (or graph input/output) name, "" for graph-level findings
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        text = f"{self.severity.upper():7s} {self.check}{where}: {self.message}"
        return f"{text}\n        fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "check": self.check, "node": self.node,
                "message": self.message, "fix": self.fix}


@dataclass
class LintReport:
    source: str
    precision: str  # the precision the graph was linted as
    detected_precision: str
    opset: int | None
    nodes: int
    op_types: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    table_version: str = ""
    skipped: str = ""  # why a directory lint did not judge this file ("" when it did)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, check: str, node: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(severity, check, node, message, fix))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "precision": self.precision,
                "detected_precision": self.detected_precision, "opset": self.opset,
                "nodes": self.nodes, "op_types": dict(sorted(self.op_types.items())),
                "table_version": self.table_version,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [f.to_dict() for f in self.findings], "skipped": self.skipped}

    def render(self) -> str:
        if self.skipped:
            return f"TensorRT lint SKIPPED: {self.source} ({self.precision}): {self.skipped}"
        verdict = "OK" if self.ok else "NOT READY"
        head = (f"TensorRT lint {verdict}: {self.source} ({self.precision}, opset {self.opset}, "
                f"{self.nodes} nodes; {len(self.errors)} error(s), {len(self.warnings)} warning(s); "
                f"op table {self.table_version})")
        return "\n".join([head] + [f"  {f}" for f in self.findings])

    __str__ = render

    def raise_for_errors(self) -> None:
        """Raise :class:`LintError` naming the first error and its fix when the lint failed."""
        if self.errors:
            first = self.errors[0]
            more = f" (+{len(self.errors) - 1} more; run `exporter lint {self.source}`)" \
                if len(self.errors) > 1 else ""
            raise LintError(f"{self.source} is not TensorRT-ready: {first.check}"
                            f"{' [' + first.node + ']' if first.node else ''}: {first.message}{more}",
                            fix=first.fix or None)
